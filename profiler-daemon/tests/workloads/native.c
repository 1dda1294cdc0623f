/* Native workload for the integration tests: known functions under a known call chain.
 *
 *   native cpu SECONDS       main -> run -> fn_a (2 units) / fn_b (1 unit), by equal loops
 *   native syscall SECONDS   main -> syscall_loop -> write(2) to /dev/null
 *   native sleep SECONDS     main -> sleep_loop -> nanosleep(2) for 20 ms at a time
 *   native grow MIB          main -> grow_heap -> touch_pages: MIB MiB of malloc'd memory, kept
 *   native huge MIB          main -> grow_huge -> touch_pages: MIB MiB of memory advised to use
 *                            transparent huge pages, kept; prints its AnonHugePages line and
 *                            waits a second
 *
 * Built with frame pointers and without inlining, so that user stacks unwind fully. */
#include <fcntl.h>
#include <sys/mman.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;

#define SPIN(n)                                                                                    \
    for (uint64_t i = 0; i < (n); i++) {                                                           \
        sink += i ^ (sink >> 3);                                                                   \
    }

__attribute__((noinline)) void fn_a(void) { SPIN(2000000); }
__attribute__((noinline)) void fn_b(void) { SPIN(1000000); }

__attribute__((noinline)) void run(void) {
    fn_a();
    fn_b();
}

__attribute__((noinline)) void syscall_loop(int fd) {
    char byte = 0;
    for (int i = 0; i < 1000; i++) {
        if (write(fd, &byte, 1) != 1) {
            exit(3);
        }
    }
}

__attribute__((noinline)) void sleep_loop(void) {
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 20 * 1000 * 1000};
    nanosleep(&pause, NULL);
}

__attribute__((noinline)) void touch_pages(char *block, size_t size) {
    for (size_t at = 0; at < size; at += 4096) {
        block[at] = 1;
    }
}

__attribute__((noinline)) void grow_heap(long mib) {
    for (long i = 0; i < mib; i++) {
        char *block = malloc(1 << 20);
        if (block == NULL) {
            exit(4);
        }
        touch_pages(block, 1 << 20);
    }
}

__attribute__((noinline)) void grow_huge(long mib) {
    size_t huge = 2 << 20, size = (size_t)mib << 20;
    char *raw = mmap(NULL, size + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        exit(4);
    }
    char *block = (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
    if (madvise(block, size, MADV_HUGEPAGE) != 0) {
        exit(5);
    }
    touch_pages(block, size);
    FILE *rollup = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    while (rollup != NULL && fgets(line, sizeof line, rollup) != NULL) {
        if (strncmp(line, "AnonHugePages:", 14) == 0) {
            fputs(line, stdout);
        }
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s cpu|syscall|sleep SECONDS | grow|huge MIB\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "huge") == 0) {
        grow_huge(atol(argv[2]));
        /* Kept for three seconds: the daemon reads what each fault mapped while the process
         * runs, and at a fault period of 1 its queues lag behind every fault of the host (with
         * a copy of the stack each) while other tests run beside this one. */
        fflush(stdout);
        sleep(3);
        return 0;
    }
    if (strcmp(argv[1], "grow") == 0) {
        grow_heap(atol(argv[2]));
        return 0;
    }
    double end = now() + atof(argv[2]);
    if (strcmp(argv[1], "cpu") == 0) {
        while (now() < end) {
            run();
        }
    } else if (strcmp(argv[1], "syscall") == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd < 0) {
            return 3;
        }
        while (now() < end) {
            syscall_loop(fd);
        }
    } else if (strcmp(argv[1], "sleep") == 0) {
        while (now() < end) {
            sleep_loop();
        }
    } else {
        return 2;
    }
    return 0;
}
