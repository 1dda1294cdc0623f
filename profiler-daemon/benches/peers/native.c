/* Fixed-work native workload of the peers benchmark.
 *
 *   native UNITS    prints "ready", waits for a line on standard input, runs UNITS units of
 *                   integer work through a three-deep call chain, prints the seconds it took
 *   native -SECONDS the same work in a loop for SECONDS, for the kernel cost per sample
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

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

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: native UNITS | native -SECONDS\n");
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
