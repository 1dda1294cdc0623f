/* Code without frame pointers, for the unwinding tests:
 *
 *   unwind SECONDS   main -> dispatch_even (2/3 of the time) or dispatch_odd (1/3) -> mix_block
 *   unwind sleep SECONDS
 *                    main -> nap_long (2 ms) and nap_short (1 ms) in turn -> usleep: off the
 *                    CPU in the C library's sleep, 2/3 of the time under nap_long
 *
 * Built with -O2 -fomit-frame-pointer: no function keeps a frame record, and each keeps a
 * buffer on its stack, so only the unwind tables say where its caller's return address is. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;

__attribute__((noinline)) uint64_t mix_block(uint64_t seed) {
    volatile uint64_t block[24];
    for (int i = 0; i < 24; i++) {
        block[i] = seed * 0x9E3779B97F4A7C15ull + (uint64_t)i;
    }
    uint64_t x = 0;
    for (int r = 0; r < 16; r++) {
        for (int i = 0; i < 24; i++) {
            x = (x ^ block[i]) * 0xff51afd7ed558ccdull;
            block[i] = x >> 7;
        }
    }
    return x;
}

__attribute__((noinline)) uint64_t dispatch_even(uint64_t n) {
    volatile uint64_t seen[8] = {0};
    uint64_t x = n;
    for (uint64_t i = 0; i < n; i++) {
        x = mix_block(x + 2 * i);
        seen[i & 7] = x;
    }
    return x ^ seen[3];
}

__attribute__((noinline)) uint64_t dispatch_odd(uint64_t n) {
    volatile uint64_t seen[8] = {0};
    uint64_t x = n;
    for (uint64_t i = 0; i < n; i++) {
        x = mix_block(x + 2 * i + 1);
        seen[i & 7] = x;
    }
    return x ^ seen[5];
}

__attribute__((noinline)) void nap_long(void) {
    volatile uint64_t kept[4] = {1, 2, 3, 4};
    usleep(2000);
    sink = kept[1];
}

__attribute__((noinline)) void nap_short(void) {
    volatile uint64_t kept[4] = {1, 2, 3, 4};
    usleep(1000);
    sink = kept[2];
}

static double elapsed(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

int main(int argc, char **argv) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (argc > 2 && strcmp(argv[1], "sleep") == 0) {
        double seconds = atof(argv[2]);
        while (elapsed(&start) < seconds) {
            nap_long();
            nap_short();
        }
        return 0;
    }
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    do {
        sink = dispatch_even(2000);
        sink = dispatch_odd(1000);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((double)(now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 < seconds);
    return 0;
}
