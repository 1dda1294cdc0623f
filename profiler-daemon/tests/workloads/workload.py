"""Python workload for the integration tests: known functions, call chains and lines.

    python workload.py MODE SECONDS
    python workload.py calls N
    python workload.py leaky SECONDS

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


def with_subinterpreter(seconds):
    """Makes a subinterpreter (the newest interpreter, at the head of the runtime's list), then
    waits for a line on standard input and runs hot code in the main interpreter."""
    try:
        import _interpreters as interpreters
    except ImportError:
        import _xxsubinterpreters as interpreters
    interpreters.create()
    print("ready", flush=True)
    sys.stdin.readline()
    hot_outer(time.time() + seconds)


def wall_handler(spent):
    """A request that computes, then waits: the wall profile must split its time between the
    two lines as the clock on the wall does."""
    start = time.perf_counter()
    burn(40)  # LINE:wall_cpu
    middle = time.perf_counter()
    time.sleep(0.01)  # LINE:wall_sleep
    end = time.perf_counter()
    spent["wall_cpu"] += middle - start
    spent["wall_sleep"] += end - middle


def wall(deadline):
    """Runs wall_handler until the deadline and prints each line's own measure of its wall
    time, in seconds, as JSON on standard output."""
    import json

    spent = {"wall_cpu": 0.0, "wall_sleep": 0.0}
    while time.time() < deadline:
        wall_handler(spent)
    print(json.dumps(spent))


def wait_for_lock(lock, deadline):
    while time.time() < deadline:
        if lock.acquire(timeout=0.2):  # LINE:lock_wait
            lock.release()
            time.sleep(0.001)


def write_and_sync(deadline):
    fd = os.open("blocked-io.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = os.urandom(64 * 1024)
    try:
        while time.time() < deadline:
            os.pwrite(fd, block, 0)
            os.fsync(fd)  # LINE:fsync
    finally:
        os.close(fd)
        os.unlink("blocked-io.tmp")


def blocked(deadline):
    """One thread waits on a lock that the main thread holds nearly all the time, another
    writes and syncs a file in the working directory (disk I/O)."""
    lock = threading.Lock()
    lock.acquire()
    threads = [
        threading.Thread(target=wait_for_lock, args=(lock, deadline), name="lock-waiter"),
        threading.Thread(target=write_and_sync, args=(deadline,), name="disk-writer"),
    ]
    for t in threads:
        t.start()
    while time.time() < deadline:
        time.sleep(0.5)
        lock.release()
        lock.acquire()
    lock.release()
    for t in threads:
        t.join()


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


def my_func():
    # memory_profiler's example: about 7.6 MiB, then about 152.6 MiB that is freed again.
    a = [1] * (10 ** 6)  # LINE:small_list
    b = [2] * (2 * 10 ** 7)  # LINE:big_list
    del b
    return a


def handle_request(kept):
    # A handler that leaks: each request builds a 256 KiB scratch structure that is freed
    # again, and keeps 32 KiB alive for good (when `kept` outlives the request).
    scratch = [bytearray(4096) for _ in range(64)]  # LINE:transient
    kept.append(bytearray(32 * 1024))  # LINE:leak
    return len(scratch)


def serve(until, kept=None):
    # With `kept`, what the handler keeps stays there; without, it goes with each request.
    served = 0
    while time.time() < until:
        handle_request([] if kept is None else kept)
        served += 1
        time.sleep(0.002)
    return served


def utc(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def leaky_server(seconds):
    # Serves from a whole second on for SECONDS without leaking, then for SECONDS leaking.
    # Prints the bounds of the two phases (FROM TO FROM TO) and the requests served while
    # leaking.
    start = int(time.time()) + 1
    time.sleep(start - time.time())
    serve(start + seconds)
    kept = []
    served = serve(start + 2 * seconds, kept)
    print(utc(start), utc(start + seconds), utc(start + seconds), utc(start + 2 * seconds))
    print(served, flush=True)


def main():
    mode, seconds = sys.argv[1], float(sys.argv[2])
    if mode == "leaky":
        # Found by the profiler (its start-up faults) before it serves.
        time.sleep(1)
        leaky_server(int(seconds))
        time.sleep(0.5)
        return
    if mode == "memory":
        # Found by the profiler (its start-up faults) before the function runs.
        time.sleep(seconds)
        my_func()
        time.sleep(0.5)
        return
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
    if mode == "subinterpreter":
        with_subinterpreter(seconds)
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
    elif mode == "wall":
        wall(deadline)
    elif mode == "blocked":
        blocked(deadline)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
