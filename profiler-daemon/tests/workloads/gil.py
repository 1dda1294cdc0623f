"""GIL workload for the integration tests.

    python gil.py THREADS SECONDS

Runs THREADS CPU-bound threads in pure Python for SECONDS while the main thread waits in
join(), after printing one line "tid N" per thread with its kernel thread id.
"""
import sys
import threading
import time


def spin(deadline):
    x = 0
    while time.time() < deadline:
        for i in range(1000):
            x += i


def main():
    threads, seconds = int(sys.argv[1]), float(sys.argv[2])
    deadline = time.time() + seconds
    ids = []
    ready = threading.Condition()

    def worker():
        with ready:
            ids.append(threading.get_native_id())
            ready.notify()
        spin(deadline)

    workers = [threading.Thread(target=worker, name=f"spin-{i}") for i in range(threads)]
    for w in workers:
        w.start()
    with ready:
        ready.wait_for(lambda: len(ids) == threads)
    for tid in ids:
        print(f"tid {tid}", flush=True)
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
