// A process that looks like a CPython interpreter to a profiler (it exports `_PyRuntime`,
// `PyCode_Type` and `Py_Version`), but whose `Py_Version` page is served by userfaultfd and is
// never served: a read of it from another process (process_vm_readv) blocks until this
// process exits. It runs for SECONDS, on the CPU for a millisecond every half second.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

__attribute__((aligned(4096))) unsigned int Py_Version[1024];
__attribute__((aligned(4096))) char _PyRuntime[4096];
char PyCode_Type[64] = {1};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SECONDS\n", argv[0]);
        return 2;
    }
    long uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
    struct uffdio_api api = {.api = UFFD_API};
    struct uffdio_register reg = {
        .range = {.start = (unsigned long)Py_Version, .len = sizeof Py_Version},
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) {
        perror("userfaultfd");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    double end = now() + atof(argv[1]);
    volatile unsigned long spins = 0;
    while (now() < end) {
        double burst = now() + 0.001;
        while (now() < burst) spins++;
        usleep(500 * 1000);
    }
    return 0;
}
