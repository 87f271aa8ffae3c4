/*
 * cpu-pingpong: how long one cache line takes to go from CPU A to CPU B and
 * back, the cost a shared-memory ring (vhost-user-blk's virtqueue) pays for
 * every request that crosses between a client and a daemon pinned apart.
 *
 *   cpu-pingpong CPU_A CPU_B [ROUND_TRIPS]      prints the mean in ns
 *
 * In a VM this depends on where the hypervisor runs the two vCPUs at the
 * moment (SMT siblings, one L3, two L3s), which can change from run to run:
 * bench/vhost/run.sh records it before every run.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Alignas(64) uint64_t ball;
static long rounds;

static int pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void wait_for(uint64_t v)
{
	while (__atomic_load_n(&ball, __ATOMIC_ACQUIRE) != v)
		__builtin_ia32_pause();
}

static void *partner(void *arg)
{
	if (pin((int)(intptr_t)arg) != 0)
		return (void *)1;
	for (long i = 0; i < rounds; i++) {
		wait_for(2 * (uint64_t)i + 1);
		__atomic_store_n(&ball, 2 * (uint64_t)i + 2, __ATOMIC_RELEASE);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct timespec t0, t1;
	pthread_t t;
	void *res;
	int a, b, rc;

	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: %s CPU_A CPU_B [ROUND_TRIPS]\n", argv[0]);
		return 2;
	}
	a = atoi(argv[1]);
	b = atoi(argv[2]);
	rounds = argc == 4 ? atol(argv[3]) : 100000;
	if (rounds <= 0 || a == b) {
		fprintf(stderr, "%s: need two different CPUs and a positive count\n", argv[0]);
		return 2;
	}
	rc = pin(a);
	if (rc != 0) {
		fprintf(stderr, "%s: cannot run on CPU %d: %s\n", argv[0], a, strerror(rc));
		return 1;
	}
	rc = pthread_create(&t, NULL, partner, (void *)(intptr_t)b);
	if (rc != 0) {
		fprintf(stderr, "%s: pthread_create: %s\n", argv[0], strerror(rc));
		return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < rounds; i++) {
		__atomic_store_n(&ball, 2 * (uint64_t)i + 1, __ATOMIC_RELEASE);
		wait_for(2 * (uint64_t)i + 2);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	pthread_join(t, &res);
	if (res != NULL) {
		fprintf(stderr, "%s: cannot run on CPU %d\n", argv[0], b);
		return 1;
	}
	printf("%.1f\n",
	       ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) /
		       (double)rounds);
	return 0;
}
