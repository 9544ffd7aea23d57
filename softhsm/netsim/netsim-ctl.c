/*
 * netsim-ctl: sends one command to the emulated network HSM (README.md, "Control").
 *
 *   netsim-ctl <control-dir | socket> <command> [arguments…]
 *
 * With a directory (NETSIM_CONTROL), the command goes to every process listening there (netsim-<pid>.sock); sockets
 * nobody listens on any more (a process that died) are removed. Each reply is printed, prefixed with "<pid>: " when
 * there are several processes. Exit status: 0 when every process answered ok, 1 when none listens (or usage),
 * 2 when one answered an error.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

enum { SENT_OK, SENT_ERROR, NOBODY };

static int send_command(const char *path, const char *line, const char *prefix) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) {
    fprintf(stderr, "netsim-ctl: %s: path too long for a UNIX socket\n", path);
    return NOBODY;
  }
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    int err = errno;
    if (fd >= 0) close(fd);
    if (err == ECONNREFUSED) unlink(path); /* nobody listens: its process is gone */
    else fprintf(stderr, "netsim-ctl: %s: %s\n", path, strerror(err));
    return NOBODY;
  }
  struct timeval tv = {.tv_sec = 30};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  size_t len = strlen(line);
  if (send(fd, line, len, MSG_NOSIGNAL) != (ssize_t)len || shutdown(fd, SHUT_WR) != 0) {
    fprintf(stderr, "netsim-ctl: %s: %s\n", path, strerror(errno));
    close(fd);
    return NOBODY;
  }
  char reply[65536];
  size_t used = 0;
  ssize_t n;
  while (used < sizeof reply - 1 && ((n = recv(fd, reply + used, sizeof reply - 1 - used, 0)) > 0 ||
                                     (n < 0 && errno == EINTR)))
    if (n > 0) used += (size_t)n;
  close(fd);
  reply[used] = 0;
  if (used == 0) {
    fprintf(stderr, "netsim-ctl: %s: no reply\n", path);
    return SENT_ERROR;
  }
  int error = 0;
  for (char *save = NULL, *l = strtok_r(reply, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    printf("%s%s\n", prefix, l);
    if (strncmp(l, "error", 5) == 0) error = 1;
  }
  return error ? SENT_ERROR : SENT_OK;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: netsim-ctl <control-dir | socket> <command> [arguments...]   (command help lists them)\n");
    return 1;
  }
  char line[1024] = "";
  for (int i = 2; i < argc; i++) {
    if (strlen(line) + strlen(argv[i]) + 2 >= sizeof line) {
      fprintf(stderr, "netsim-ctl: command too long\n");
      return 1;
    }
    strcat(line, argv[i]);
    strcat(line, i + 1 < argc ? " " : "\n");
  }

  struct stat st;
  if (stat(argv[1], &st) != 0) {
    fprintf(stderr, "netsim-ctl: %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  if (!S_ISDIR(st.st_mode)) {
    int r = send_command(argv[1], line, "");
    return r == SENT_OK ? 0 : r == SENT_ERROR ? 2 : 1;
  }

  struct dirent **entries;
  int n = scandir(argv[1], &entries, NULL, alphasort), sockets = 0;
  if (n < 0) {
    fprintf(stderr, "netsim-ctl: %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  for (int i = 0; i < n; i++) {
    const char *name = entries[i]->d_name;
    size_t len = strlen(name);
    if (strncmp(name, "netsim-", 7) == 0 && len > 12 && strcmp(name + len - 5, ".sock") == 0) sockets++;
  }
  int answered = 0, errors = 0;
  for (int i = 0; i < n; i++) {
    const char *name = entries[i]->d_name;
    size_t len = strlen(name);
    if (strncmp(name, "netsim-", 7) == 0 && len > 12 && strcmp(name + len - 5, ".sock") == 0) {
      char path[4096], prefix[64] = "";
      snprintf(path, sizeof path, "%s/%s", argv[1], name);
      if (sockets > 1) snprintf(prefix, sizeof prefix, "%.*s: ", (int)(len - 12), name + 7);
      int r = send_command(path, line, prefix);
      answered += r != NOBODY;
      errors += r == SENT_ERROR;
    }
    free(entries[i]);
  }
  free(entries);
  if (!answered) {
    fprintf(stderr, "netsim-ctl: no netsim process listens in %s\n", argv[1]);
    return 1;
  }
  return errors ? 2 : 0;
}
