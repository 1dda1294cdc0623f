/* A frameless leaf under a function with a frame record, for the leaf caller test:
 *
 *   leaf SECONDS   main -> dispatch_round -> crc_fold_alpha, for SECONDS
 *
 * Built with -O2 -fno-omit-frame-pointer: GCC still sets up no frame in crc_fold_alpha, which
 * needs no stack, so the frame-pointer walk alone skips dispatch_round. */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static volatile uint64_t sink;

__attribute__((noinline)) uint64_t crc_fold_alpha(uint64_t x) {
    for (int i = 0; i < 64; i++) {
        x = (x >> 1) ^ (-(x & 1) & 0xC96C5795D7870F42ull);
    }
    return x;
}

__attribute__((noinline)) void dispatch_round(uint64_t n) {
    uint64_t x = n;
    for (uint64_t i = 0; i < n; i++) {
        x = crc_fold_alpha(x + i);
    }
    sink = x;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        dispatch_round(100000);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((double)(now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 < seconds);
    return 0;
}
