"""Fixed-work Python workloads of the peers benchmark.

    python workload.py pure|callbacks|threads UNITS   fixed work, timed from inside
    python workload.py depth FRAMES SECONDS           busy at a known stack depth
    python workload.py busy SECONDS                   busy pure-Python loop
    python workload.py memory ROUNDS                  grows and frees memory, timed from inside

The memory mode runs memory_profiler's README example (a list of 10**6 items, then one of
2 * 10**7 that is deleted) and a loop that builds a list of strings, ROUNDS times, and prints
"WALL CPU" seconds (perf_counter, process_time). Run under `python -m memory_profiler`, its
functions are the ones `@profile` decorates.

The fixed-work modes print "ready", wait for a line on standard input (so that a profiler can
attach first), do the work, and print the seconds it took (perf_counter) as the last line.
"""
import builtins
import sys
import threading
import time

# memory_profiler's line-by-line mode puts `profile` in builtins; otherwise it does nothing.
profile = getattr(builtins, "profile", lambda f: f)


def burn(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def key(x):
    return -x


def pure(units):
    for _ in range(units):
        burn(10000)


def callbacks(units):
    data = list(range(1000))
    for _ in range(units):
        sorted(data, key=key)
        list(map(key, data))


def threads(units):
    workers = [threading.Thread(target=pure, args=(units // 4,)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


@profile
def my_func():
    a = [1] * (10 ** 6)
    b = [2] * (2 * 10 ** 7)
    del b
    return a


@profile
def build(n):
    out = []
    for i in range(n):
        out.append(str(i) * 4)
    return out


def memory(rounds):
    for _ in range(rounds):
        my_func()
        build(100_000)


def at_depth(frames, deadline):
    if frames > 1:
        return at_depth(frames - 1, deadline)
    while time.time() < deadline:
        burn(1000)


def main():
    mode = sys.argv[1]
    if mode == "depth":
        # main and <module> are two of the frames.
        at_depth(int(sys.argv[2]) - 2, time.time() + float(sys.argv[3]))
        return
    if mode == "memory":
        wall, cpu = time.perf_counter(), time.process_time()
        memory(int(sys.argv[2]))
        print(f"{time.perf_counter() - wall:.6f} {time.process_time() - cpu:.6f}", flush=True)
        return
    if mode == "busy":
        deadline = time.time() + float(sys.argv[2])
        while time.time() < deadline:
            burn(1000)
        return
    work = {"pure": pure, "callbacks": callbacks, "threads": threads}[mode]
    units = int(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    work(units)
    print(f"{time.perf_counter() - start:.6f}", flush=True)


if __name__ == "__main__":
    main()
