"""Python workload for the integration tests: known functions, call chains and lines.

    python workload.py MODE SECONDS
    python workload.py calls N

Lines marked with a `# LINE:name` comment are looked up by the tests, so the file can change
without the tests hard-coding line numbers.
"""
import asyncio
import os
import sys
import threading
import time
import zlib


def spin_until(deadline, body):
    while time.time() < deadline:
        body()


def hot_inner():
    total = 0
    for i in range(20000):
        total += i * i  # LINE:hot
    return total


def hot_outer(deadline):
    spin_until(deadline, hot_inner)


def recurse(depth, deadline):
    if depth == 0:
        spin_until(deadline, hot_inner)
        return
    recurse(depth - 1, deadline)


def worker_a(deadline):
    spin_until(deadline, hot_inner)


def worker_b(deadline):
    spin_until(deadline, hot_inner)


def gen_work():
    while True:
        yield hot_inner()


def drive_generator(deadline):
    gen = gen_work()
    while time.time() < deadline:
        next(gen)


async def coro_work(deadline):
    while time.time() < deadline:
        hot_inner()
        await asyncio.sleep(0)


def compress_loop(deadline):
    data = bytes(range(256)) * 4096
    while time.time() < deadline:
        zlib.compress(data, 9)


def burn(units):
    total = 0
    for _ in range(units):
        for i in range(2000):
            total += i * i
    return total


def work_a(units):
    return burn(units)


def work_b(units):
    return burn(units)


def work_c(units):
    return burn(units)


def accuracy(deadline):
    """Runs three functions in a 3:2:1 ratio and prints the CPU seconds each one measured for
    itself, and the process's total, as JSON on standard output."""
    import json

    spent = {"work_a": 0.0, "work_b": 0.0, "work_c": 0.0}
    while time.time() < deadline:
        for fn, units in ((work_a, 30), (work_b, 20), (work_c, 10)):
            start = time.thread_time()
            fn(units)
            spent[fn.__name__] += time.thread_time() - start
    spent["process"] = time.process_time()
    print(json.dumps(spent))


def cb(x):  # LINE:cb
    return x


def counted_calls(n):
    """Calls `cb` exactly n times from C (through map) once a line arrives on standard input,
    then waits for another line (or EOF) before exiting, so that the counts can be read."""
    print("ready", flush=True)
    sys.stdin.readline()
    list(map(cb, range(n)))
    print("done", flush=True)
    sys.stdin.readline()


def sort_key(x):
    return -x


def callbacks(deadline):
    data = list(range(1000))
    while time.time() < deadline:
        sorted(data, key=sort_key)


def before_exec(deadline):
    hot_outer(deadline)


def after_exec(deadline):
    hot_outer(deadline)


def main():
    mode, seconds = sys.argv[1], float(sys.argv[2])
    if mode == "reexec":
        # Half the time here, then the same interpreter runs again under the same pid, as a
        # server's re-exec upgrade does: its interpreter state lies at new addresses.
        before_exec(time.time() + seconds / 2)
        os.execv(sys.executable, [sys.executable, __file__, "execed", str(seconds / 2)])
    if mode == "execed":
        after_exec(time.time() + seconds)
        return
    if mode == "calls":
        counted_calls(int(seconds))
        return
    deadline = time.time() + seconds
    if mode == "hot":
        hot_outer(deadline)
    elif mode == "recurse":
        recurse(150, deadline)
    elif mode == "threads":
        threads = [
            threading.Thread(target=worker_a, args=(deadline,), name="worker-a"),
            threading.Thread(target=worker_b, args=(deadline,), name="worker-b"),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elif mode == "manythreads":
        # 1,000 idle threads started after the main thread, by another thread while the main
        # thread waits off the CPU: CPython lists threads newest first, so the main thread is
        # the last of 1,002 when it starts to run.
        release = threading.Event()

        def start_idle():
            for _ in range(1000):
                threading.Thread(target=release.wait, daemon=True).start()

        starter = threading.Thread(target=start_idle)
        starter.start()
        starter.join()
        hot_outer(deadline)
        release.set()
        # Finalizing 1,000 thread states is CPU work in the main thread without Python frames
        # (a free-threaded build spends a third of a second in its allocator there); it is not
        # what this mode measures.
        os._exit(0)
    elif mode == "generator":
        drive_generator(deadline)
    elif mode == "asyncio":
        asyncio.run(coro_work(deadline))
    elif mode == "zlib":
        compress_loop(deadline)
    elif mode == "accuracy":
        accuracy(deadline)
    elif mode == "callbacks":
        callbacks(deadline)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
