/* A minimal unit-test harness: CHECK records failures and goes on. */
#pragma once

#include <stdio.h>

/* Atomic: tests bump them from several threads (test_cbw's writers, say). */
static _Atomic int check_passed, check_failed;

#define CHECK(cond)                                                                              \
	do {                                                                                     \
		if (cond) {                                                                      \
			check_passed++;                                                          \
		} else {                                                                         \
			check_failed++;                                                          \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
		}                                                                                \
	} while (0)

#define CHECK_EQ_U64(a, b)                                                                     \
	do {                                                                                   \
		unsigned long long _a = (unsigned long long)(a), _b = (unsigned long long)(b); \
		if (_a == _b) {                                                                \
			check_passed++;                                                        \
		} else {                                                                       \
			check_failed++;                                                        \
			fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%llu != %llu)\n",      \
				__FILE__, __LINE__, #a, #b, _a, _b);                           \
		}                                                                              \
	} while (0)

static inline int check_report(void)
{
	printf("%d passed, %d failed\n", check_passed, check_failed);
	return check_failed ? 1 : 0;
}
