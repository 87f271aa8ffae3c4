/*
 * A YAML document as a tree of nodes that remember where they were written,
 * so every manifest error can name FILE:LINE:COL. Built on libyaml's event
 * parser. Aliases point at the anchored node; every node lives in the tree's
 * arena and is freed with it.
 */
#pragma once

#include <stddef.h>

enum ynode_type {
	YN_SCALAR,
	YN_MAP,
	YN_SEQ
};

struct ynode {
	enum ynode_type type;
	int line, col;        /* 1-based */
	char *text;           /* YN_SCALAR */
	int plain;            /* YN_SCALAR: unquoted (so "null"/"~" mean nothing) */
	struct ynode **items; /* YN_MAP: key, value, key, value...; YN_SEQ: elements */
	size_t n;             /* number of items (twice the pairs for a map) */
	size_t cap;
	struct ynode *arena_next;
};

struct ytree {
	struct ynode *root; /* NULL for an empty document */
	struct ynode *arena;
};

/* Parse a file. 0, or -1 with "LINE:COL: message" parts in *line, *col, msg. */
int ytree_load(const char *path, struct ytree *t, int *line, int *col, char *msg, size_t len);
void ytree_free(struct ytree *t);

/* Map lookup by key (NULL when absent). */
struct ynode *ymap_get(const struct ynode *map, const char *key);
/* "mapping", "list", "value" */
const char *ynode_kind(const struct ynode *n);
/* A plain null scalar: "", "~", "null". */
int ynode_is_null(const struct ynode *n);
