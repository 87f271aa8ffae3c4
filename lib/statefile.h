/*
 * State that outlives the daemon: one-line records under RUN-DIR/SUB/ (a
 * kernel device a transport made, so that the next blkgw can take it over
 * or remove it), and whether the process that wrote one still runs.
 */
#pragma once

#include <stdbool.h>

/*
 * Call fn for every RUN-DIR/SUB/NAME.state with the file's path, its name
 * and its first line (newline included, if any); stops when fn returns
 * nonzero and returns that. 0 when the folder does not exist.
 */
int gw_state_each(const char *run_dir, const char *sub,
		  int (*fn)(void *arg, const char *path, const char *name, const char *line),
		  void *arg);

/* Does process pid exist (one we may not signal counts)? */
bool gw_pid_alive(int pid);
