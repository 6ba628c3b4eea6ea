// The C limit's lock_contended (shared/bench/limits), with both children released at the same
// instant: they spin on a shared flag instead of blocking in read() on a pipe, whose wake-ups
// start them far enough apart that they barely overlap. coproc-bench's children start together
// too (on an event), so this is the figure to set its lock_contended against; see RESULTS.md.
//   gcc -O2 -o lock_together bench/lock_together.c -lpthread
//   ./lock_together        (pthread mutex, PTHREAD_PROCESS_SHARED)
//   ./lock_together futex  (the raw futex lock)
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static long futex(atomic_int *u, int op, int val) { return syscall(SYS_futex, u, op, val, NULL, NULL, 0); }
static void flock_(atomic_int *f) {
    int c = 0;
    if (atomic_compare_exchange_strong(f, &c, 1)) return;
    if (c != 2) c = atomic_exchange(f, 2);
    while (c != 0) { futex(f, FUTEX_WAIT, 2); c = atomic_exchange(f, 2); }
}
static void funlock_(atomic_int *f) { if (atomic_fetch_sub(f, 1) != 1) { atomic_store(f, 0); futex(f, FUTEX_WAKE, 1); } }
typedef struct { pthread_mutex_t m; atomic_int f; volatile int counter; atomic_int go; } shlock_t;
int main(int argc, char **argv) {
    int futexv = argc > 1;
    long per = 200000, n = 2 * per;
    shlock_t *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pthread_mutexattr_t a; pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&s->m, &a);
    pid_t pids[2];
    for (int k = 0; k < 2; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            while (!atomic_load(&s->go)) ;
            if (futexv) for (long i = 0; i < per; i++) { flock_(&s->f); s->counter++; funlock_(&s->f); }
            else for (long i = 0; i < per; i++) { pthread_mutex_lock(&s->m); s->counter++; pthread_mutex_unlock(&s->m); }
            _exit(0);
        }
        pids[k] = pid;
    }
    usleep(20000);
    double t0 = now();
    atomic_store(&s->go, 1);
    for (int k = 0; k < 2; k++) waitpid(pids[k], NULL, 0);
    double dt = now() - t0;
    printf("%s %.1fM ops/s ok=%d\n", futexv ? "futex" : "pthread", n / dt / 1e6, s->counter == n);
}
