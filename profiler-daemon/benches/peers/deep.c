/* Twenty native frames over a busy leaf, for the cost of unwinding per sample:
 *
 *   built with -DFREESTANDING -fno-omit-frame-pointer: no C library, every function keeps a
 *   frame record, so the process is walked by frame pointers alone;
 *   built with -fomit-frame-pointer against the C library: no function keeps one, so the
 *   process's samples copy the stack, which the daemon unwinds with .eh_frame.
 *
 * Both run until killed. */
#include <stdint.h>

static volatile uint64_t sink;

__attribute__((noinline)) static uint64_t spin(uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4096; i++) {
        x = (x ^ (x >> 7)) * 0x9E3779B97F4A7C15ull;
    }
    return x;
}

/* Each level keeps a buffer on its stack, as real functions keep locals. */
__attribute__((noinline)) static uint64_t descend(int depth, uint64_t seed) {
    volatile uint64_t locals[6];
    locals[depth % 6] = seed;
    uint64_t x = depth <= 1 ? spin(seed) : descend(depth - 1, seed + 1);
    return x ^ locals[depth % 6];
}

#ifdef FREESTANDING
__attribute__((force_align_arg_pointer)) void _start(void) {
    for (uint64_t i = 0;; i++) {
        sink = descend(19, i);
    }
}
#else
int main(void) {
    for (uint64_t i = 0;; i++) {
        sink = descend(19, i);
    }
}
#endif
