/* Fixed-work native workload of the peers benchmark.
 *
 *   native UNITS    prints "ready", waits for a line on standard input, runs UNITS units of
 *                   integer work through a three-deep call chain, prints the seconds it took
 *   native -SECONDS the same work in a loop for SECONDS, for the kernel cost per sample
 *   native pingpong SECONDS
 *                   two processes on CPU 0 passing a byte back and forth over pipes for
 *                   SECONDS, each blocking in read until the other answers: a context switch
 *                   from one to the other at each pass, as fast as the CPU makes them, for the
 *                   off-CPU program's cost per switch; prints the round trips
 *   native faults MB_PER_SECOND SECONDS
 *                   maps, touches and unmaps 1 MiB regions at MB_PER_SECOND for SECONDS (a
 *                   page fault per 4 KiB page), for the page-fault program's cost; prints the
 *                   MiB mapped and its own CPU seconds
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static void leaf(void) {
    for (uint64_t i = 0; i < 1000000; i++) {
        sink += i ^ (sink >> 3);
    }
}

__attribute__((noinline)) static void middle(void) { leaf(); }

__attribute__((noinline)) static void unit(void) { middle(); }

static int pingpong(double seconds) {
    /* One CPU: every switch goes from one process straight to the other, never through the
     * idle task, so the rate and the cost per switch do not depend on where the scheduler
     * happens to put them. */
    cpu_set_t cpu0;
    CPU_ZERO(&cpu0);
    CPU_SET(0, &cpu0);
    if (sched_setaffinity(0, sizeof cpu0, &cpu0) != 0) {
        perror("sched_setaffinity");
        return 1;
    }
    int to_child[2], to_parent[2];
    if (pipe(to_child) != 0 || pipe(to_parent) != 0) {
        perror("pipe");
        return 1;
    }
    char byte = 0;
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        close(to_child[1]);
        close(to_parent[0]);
        /* Until the parent closes its end. */
        while (read(to_child[0], &byte, 1) == 1) {
            if (write(to_parent[1], &byte, 1) != 1) {
                _exit(1);
            }
        }
        _exit(0);
    }
    close(to_child[0]);
    close(to_parent[1]);
    double end = now() + seconds;
    long rounds = 0;
    while ((rounds & 1023) != 0 || now() < end) {
        if (write(to_child[1], &byte, 1) != 1 || read(to_parent[0], &byte, 1) != 1) {
            perror("ping-pong");
            return 1;
        }
        rounds++;
    }
    close(to_child[1]);
    waitpid(child, NULL, 0);
    printf("%ld\n", rounds);
    return 0;
}

__attribute__((noinline)) static void touch(volatile char *region, size_t size) {
    for (size_t at = 0; at < size; at += 4096) {
        region[at] = 1;
    }
}

static int faults(double mib_per_second, double seconds) {
    const size_t size = 1 << 20;
    double start = now();
    long mapped = 0;
    while (now() < start + seconds) {
        while (mapped < (now() - start) * mib_per_second) {
            char *region = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                -1, 0);
            if (region == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            touch(region, size);
            munmap(region, size);
            mapped++;
        }
        usleep(1000);
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    printf("%ld %.6f\n", mapped,
           usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
               usage.ru_stime.tv_usec / 1e6);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "pingpong") == 0) {
        return pingpong(atof(argv[2]));
    }
    if (argc == 4 && strcmp(argv[1], "faults") == 0) {
        return faults(atof(argv[2]), atof(argv[3]));
    }
    if (argc != 2) {
        fprintf(stderr, "usage: native UNITS | native -SECONDS | native pingpong SECONDS\n");
        return 2;
    }
    long n = atol(argv[1]);
    if (n < 0) {
        double end = now() - (double)n;
        while (now() < end) {
            unit();
        }
        return 0;
    }
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) {
        return 3;
    }
    double start = now();
    for (long i = 0; i < n; i++) {
        unit();
    }
    printf("%.6f\n", now() - start);
    return 0;
}
