#include "config/yaml_tree.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "lib/util.h"

#define YT_MAX_DEPTH   64
#define YT_MAX_ANCHORS 256

struct anchor {
	char *name;
	struct ynode *node;
};

struct builder {
	struct ytree *t;
	struct ynode *stack[YT_MAX_DEPTH];
	int depth;
	struct anchor anchors[YT_MAX_ANCHORS];
	int nanchors;
};

static struct ynode *node_new(struct builder *b, enum ynode_type type, yaml_mark_t m)
{
	struct ynode *n = calloc(1, sizeof(*n));

	if (!n)
		return NULL;
	n->type = type;
	n->line = (int)m.line + 1;
	n->col = (int)m.column + 1;
	n->arena_next = b->t->arena;
	b->t->arena = n;
	return n;
}

static int node_push(struct ynode *parent, struct ynode *child)
{
	if (parent->n == parent->cap) {
		size_t cap = parent->cap ? parent->cap * 2 : 8;
		struct ynode **v = realloc(parent->items, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		parent->items = v;
		parent->cap = cap;
	}
	parent->items[parent->n++] = child;
	return 0;
}

static int attach(struct builder *b, struct ynode *n)
{
	if (b->depth == 0) {
		if (!b->t->root)
			b->t->root = n;
		return 0;
	}
	return node_push(b->stack[b->depth - 1], n);
}

static int remember(struct builder *b, const yaml_char_t *anchor, struct ynode *n)
{
	if (!anchor)
		return 0;
	if (b->nanchors >= YT_MAX_ANCHORS)
		return -E2BIG;
	b->anchors[b->nanchors].name = strdup((const char *)anchor);
	if (!b->anchors[b->nanchors].name)
		return -ENOMEM;
	b->anchors[b->nanchors].node = n;
	b->nanchors++;
	return 0;
}

/*
 * A tab in the indentation of a line up to `upto` (or where the parser
 * stopped): libyaml's words for it ("found character that cannot start any
 * token") do not say what to change. true with its position.
 */
static bool find_indent_tab(FILE *f, int upto, int stop_line, int stop_col, int *line, int *col)
{
	int c, l = 1, cl = 1;
	bool indent = true;

	rewind(f);
	while ((c = getc(f)) != EOF && l <= upto) {
		if (c == '\t' && (indent || (l == stop_line && cl == stop_col))) {
			*line = l;
			*col = cl;
			return true;
		}
		if (c == '\n') {
			l++;
			cl = 1;
			indent = true;
			continue;
		}
		if (c != ' ' && c != '\t')
			indent = false;
		cl++;
	}
	return false;
}

int ytree_load(const char *path, struct ytree *t, int *line, int *col, char *msg, size_t len)
{
	yaml_parser_t parser;
	yaml_event_t ev;
	struct builder b;
	FILE *f;
	int rc = -1, done = 0;

	memset(t, 0, sizeof(*t));
	memset(&b, 0, sizeof(b));
	b.t = t;
	*line = *col = 0;
	f = fopen(path, "rb");
	if (!f) {
		gw_seterr(msg, len, "cannot read the manifest: %s", strerror(errno));
		return -1;
	}
	if (!yaml_parser_initialize(&parser)) {
		fclose(f);
		gw_seterr(msg, len, "out of memory");
		return -1;
	}
	yaml_parser_set_input_file(&parser, f);
	while (!done) {
		struct ynode *n = NULL;

		if (!yaml_parser_parse(&parser, &ev)) {
			*line = (int)parser.problem_mark.line + 1;
			*col = (int)parser.problem_mark.column + 1;
			if (find_indent_tab(f, *line, *line, *col, line, col))
				gw_seterr(
					msg, len,
					"tabs are not allowed in YAML indentation: indent with spaces");
			else if (parser.context)
				gw_seterr(msg, len,
					  "invalid YAML: %s %s that starts at line %d, column %d",
					  parser.problem, parser.context,
					  (int)parser.context_mark.line + 1,
					  (int)parser.context_mark.column + 1);
			else
				gw_seterr(msg, len, "invalid YAML: %s",
					  parser.problem ? parser.problem : "error");
			goto out;
		}
		switch (ev.type) {
		case YAML_STREAM_END_EVENT:
			done = 1;
			break;
		case YAML_DOCUMENT_START_EVENT:
			if (t->root) {
				*line = (int)ev.start_mark.line + 1;
				*col = (int)ev.start_mark.column + 1;
				gw_seterr(msg, len,
					  "a manifest holds one YAML document; found a second one");
				yaml_event_delete(&ev);
				goto out;
			}
			break;
		case YAML_SCALAR_EVENT:
			n = node_new(&b, YN_SCALAR, ev.start_mark);
			if (!n || !(n->text = strndup((const char *)ev.data.scalar.value,
						      ev.data.scalar.length)))
				goto oom;
			n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
			if (strlen(n->text) != ev.data.scalar.length) {
				*line = n->line;
				*col = n->col;
				gw_seterr(msg, len, "value contains a NUL byte");
				yaml_event_delete(&ev);
				goto out;
			}
			if (remember(&b, ev.data.scalar.anchor, n) || attach(&b, n))
				goto oom;
			break;
		case YAML_SEQUENCE_START_EVENT:
		case YAML_MAPPING_START_EVENT:
			n = node_new(&b, ev.type == YAML_SEQUENCE_START_EVENT ? YN_SEQ : YN_MAP,
				     ev.start_mark);
			if (!n)
				goto oom;
			if (b.depth >= YT_MAX_DEPTH) {
				*line = n->line;
				*col = n->col;
				gw_seterr(msg, len, "nesting deeper than %d levels", YT_MAX_DEPTH);
				yaml_event_delete(&ev);
				goto out;
			}
			if (remember(&b,
				     ev.type == YAML_SEQUENCE_START_EVENT
					     ? ev.data.sequence_start.anchor
					     : ev.data.mapping_start.anchor,
				     n) ||
			    attach(&b, n))
				goto oom;
			b.stack[b.depth++] = n;
			break;
		case YAML_SEQUENCE_END_EVENT:
		case YAML_MAPPING_END_EVENT:
			if (b.depth > 0) /* libyaml balances them; never below the root */
				b.depth--;
			break;
		case YAML_ALIAS_EVENT: {
			int i;

			for (i = b.nanchors - 1; i >= 0; i--)
				if (strcmp(b.anchors[i].name, (const char *)ev.data.alias.anchor) ==
				    0)
					break;
			if (i < 0) {
				*line = (int)ev.start_mark.line + 1;
				*col = (int)ev.start_mark.column + 1;
				gw_seterr(msg, len, "unknown alias '*%s'", ev.data.alias.anchor);
				yaml_event_delete(&ev);
				goto out;
			}
			if (attach(&b, b.anchors[i].node))
				goto oom;
			break;
		}
		default:
			break;
		}
		yaml_event_delete(&ev);
	}
	rc = 0;
	goto out;
oom:
	yaml_event_delete(&ev);
	gw_seterr(msg, len, "out of memory");
out:
	for (int i = 0; i < b.nanchors; i++)
		free(b.anchors[i].name);
	yaml_parser_delete(&parser);
	fclose(f);
	if (rc)
		ytree_free(t);
	return rc;
}

void ytree_free(struct ytree *t)
{
	struct ynode *n = t->arena;

	while (n) {
		struct ynode *next = n->arena_next;

		free(n->text);
		free(n->items);
		free(n);
		n = next;
	}
	t->arena = NULL;
	t->root = NULL;
}

struct ynode *ymap_get(const struct ynode *map, const char *key)
{
	if (!map || map->type != YN_MAP)
		return NULL;
	for (size_t i = 0; i + 1 < map->n; i += 2)
		if (map->items[i]->type == YN_SCALAR && strcmp(map->items[i]->text, key) == 0)
			return map->items[i + 1];
	return NULL;
}

const char *ynode_kind(const struct ynode *n)
{
	switch (n->type) {
	case YN_MAP:
		return "a mapping";
	case YN_SEQ:
		return "a list";
	default:
		return "a single value";
	}
}

int ynode_is_null(const struct ynode *n)
{
	return n->type == YN_SCALAR && n->plain &&
	       (!*n->text || strcmp(n->text, "~") == 0 || strcmp(n->text, "null") == 0);
}
