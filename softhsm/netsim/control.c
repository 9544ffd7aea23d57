/*
 * control.c: the emulated network HSM's control channel. Each process that initializes the module with a control
 * directory (NETSIM_CONTROL) serves <dir>/netsim-<pid>.sock from one thread: a client connects, writes command lines,
 * and gets for each a reply whose last line starts with "ok" or "error". A command is in force when its "ok" is
 * sent. The commands are listed by `help` and in README.md. A TEST TOOL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "netsim.h"

static const char HELP[] =
    "commands (one per line; the reply ends with a line \"ok…\" or \"error…\"):\n"
    "  invalidate-sessions [keep-login]  every open session answers CKR_SESSION_HANDLE_INVALID from now on\n"
    "  device-error <ms>                 every call answers CKR_DEVICE_ERROR for <ms> (0 ends the window)\n"
    "  hang <ms>                         every call entering in the next <ms> blocks until they are over\n"
    "  general-error-next [<function>]   the next call (of <function>: C_Sign, or C_Sign* for a prefix)\n"
    "                                    answers CKR_GENERAL_ERROR; repeat the command for more\n"
    "  error-next <CKR> [<function>]     the same with another code: a CKR_ name or a number (0x30)\n"
    "  lose-backend [<CKR>]              the backend goes away: calls that need it (sign, verify, random, …)\n"
    "                                    answer <CKR> (CKR_GENERAL_ERROR) and C_Initialize fails\n"
    "  restore-backend                   the backend is back: C_Initialize works again, and only the next\n"
    "                                    C_Finalize + C_Initialize ends the errors (as tpm2-pkcs11 and tpm2-abrmd)\n"
    "  set-delay <default|C_Name> <us>   change a delay now; set-delay C_Name default removes an override\n"
    "  reset                             no faults, delays as configured at start\n"
    "  status | clear-stats | ping | help\n";

static struct {
  const char *name;
  CK_RV rv;
} const CKR_NAMES[] = {
    {"CKR_CANCEL", CKR_CANCEL},
    {"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
    {"CKR_SLOT_ID_INVALID", CKR_SLOT_ID_INVALID},
    {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
    {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
    {"CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD},
    {"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
    {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
    {"CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED},
    {"CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID},
    {"CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID},
    {"CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE},
    {"CKR_OPERATION_NOT_INITIALIZED", CKR_OPERATION_NOT_INITIALIZED},
    {"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
    {"CKR_PIN_LOCKED", CKR_PIN_LOCKED},
    {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
    {"CKR_SESSION_COUNT", CKR_SESSION_COUNT},
    {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
    {"CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED},
    {"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN},
    {"CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED},
};

/* ---- Replies ---- */

struct reply {
  char *buf;
  size_t len, cap;
};

static void say(struct reply *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct reply *r, const char *fmt, ...) {
  if (r->len >= r->cap) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(r->buf + r->len, r->cap - r->len, fmt, ap);
  va_end(ap);
  if (n > 0) r->len = r->len + (size_t)n < r->cap ? r->len + (size_t)n : r->cap - 1;
}

static int parse_ulong(const char *s, unsigned long max, unsigned long *out) {
  char *end;
  errno = 0;
  if (!s || *s == '-') return -1;
  unsigned long v = strtoul(s, &end, 0);
  if (errno || end == s || *end || v > max) return -1;
  *out = v;
  return 0;
}

static int valid_pattern(const char *p) {
  if (strlen(p) >= NETSIM_PATTERN_MAX) return 0;
  for (int i = 0; i < NETSIM_NFUNCTIONS; i++)
    if (netsim_pattern_matches(p, netsim_function_name[i])) return 1;
  return 0;
}

/* A CKR_ name this tool knows or a non-zero number; 0 when it is neither. */
static CK_RV parse_ckr(const char *s) {
  for (size_t i = 0; i < sizeof CKR_NAMES / sizeof CKR_NAMES[0]; i++)
    if (strcmp(s, CKR_NAMES[i].name) == 0) return CKR_NAMES[i].rv;
  unsigned long v;
  return parse_ulong(s, 0xffffffffUL, &v) == 0 ? v : 0;
}

static int add_pending(CK_RV rv, const char *pattern) {
  int ok = 0;
  pthread_mutex_lock(&netsim.fault_lock);
  if (netsim.npending < NETSIM_MAX_PENDING) {
    netsim.pending[netsim.npending].rv = rv;
    snprintf(netsim.pending[netsim.npending].pattern, NETSIM_PATTERN_MAX, "%s", pattern);
    netsim.npending++;
    atomic_store(&netsim.armed, 1);
    ok = 1;
  }
  pthread_mutex_unlock(&netsim.fault_lock);
  return ok;
}

static void status(struct reply *r) {
  uint64_t now = netsim_now_ns();
  say(r, "pid %ld\nmodule %s\ncontrol %s\ndefault-delay-us %ld\n", (long)getpid(), netsim.module_path,
      netsim.control_dir, atomic_load(&netsim.default_us));
  for (int i = 0; i < NETSIM_NFUNCTIONS; i++) {
    long us = atomic_load(&netsim.delay_us[i]);
    if (us >= 0) say(r, "delay-us %s %ld\n", netsim_function_name[i], us);
  }
  pthread_mutex_lock(&netsim.fault_lock);
  uint64_t hang = netsim.hang_until_ns > now ? netsim.hang_until_ns - now : 0;
  uint64_t dev = netsim.device_error_until_ns > now ? netsim.device_error_until_ns - now : 0;
  say(r, "hang-ms-left %llu\ndevice-error-ms-left %llu\n", (unsigned long long)((hang + 999999) / 1000000),
      (unsigned long long)((dev + 999999) / 1000000));
  say(r, "backend %s\n", netsim.backend_away ? "away" : netsim.backend_stuck ? "stuck" : "ok");
  for (int i = 0; i < netsim.npending; i++)
    say(r, "pending 0x%lx %s\n", netsim.pending[i].rv, netsim.pending[i].pattern[0] ? netsim.pending[i].pattern : "*");
  pthread_mutex_unlock(&netsim.fault_lock);
  unsigned long live, dead, invalidated;
  netsim_session_counts(&live, &dead, &invalidated);
  say(r, "sessions-live %lu\nsessions-dead %lu\nsessions-invalidated %lu\n", live, dead, invalidated);
  say(r, "injected %lu\ninflight %ld\nmax-inflight %ld\n", atomic_load(&netsim.injected),
      atomic_load(&netsim.inflight), atomic_load(&netsim.max_inflight));
  for (int i = 0; i < NETSIM_NFUNCTIONS; i++) {
    unsigned long n = atomic_load(&netsim.calls[i]);
    if (n) say(r, "calls %s %lu\n", netsim_function_name[i], n);
  }
  say(r, "ok\n");
}

static void execute(char *line, struct reply *r) {
  char *argv[8];
  int argc = 0;
  for (char *save = NULL, *t = strtok_r(line, " \t\r\n", &save); t && argc < 8; t = strtok_r(NULL, " \t\r\n", &save))
    argv[argc++] = t;
  if (argc == 0) {
    say(r, "error: empty command (try help)\n");
    return;
  }
  const char *cmd = argv[0];
  unsigned long v;
#define ARGS(min, max)                                                        \
  if (argc - 1 < (min) || argc - 1 > (max)) {                                 \
    say(r, "error: %s takes %d to %d arguments (try help)\n", cmd, min, max); \
    return;                                                                   \
  }

  if (strcmp(cmd, "help") == 0) {
    say(r, "%sok\n", HELP);
  } else if (strcmp(cmd, "ping") == 0) {
    say(r, "ok pid=%ld\n", (long)getpid());
  } else if (strcmp(cmd, "status") == 0) {
    status(r);
  } else if (strcmp(cmd, "invalidate-sessions") == 0) {
    ARGS(0, 1);
    if (argc == 2 && strcmp(argv[1], "keep-login") != 0) {
      say(r, "error: invalidate-sessions takes no argument or keep-login\n");
      return;
    }
    say(r, "ok invalidated=%lu\n", netsim_invalidate_sessions(argc == 2));
  } else if (strcmp(cmd, "device-error") == 0 || strcmp(cmd, "hang") == 0) {
    ARGS(1, 1);
    if (parse_ulong(argv[1], 24UL * 3600 * 1000, &v) != 0) {
      say(r, "error: %s: '%s' is not a duration in ms\n", cmd, argv[1]);
      return;
    }
    uint64_t until = v ? netsim_now_ns() + (uint64_t)v * 1000000u : 0;
    pthread_mutex_lock(&netsim.fault_lock);
    if (cmd[0] == 'h') {
      netsim.hang_until_ns = until;
      pthread_cond_broadcast(&netsim.hang_cond);
    } else {
      netsim.device_error_until_ns = until;
    }
    if (until) atomic_store(&netsim.armed, 1);
    pthread_mutex_unlock(&netsim.fault_lock);
    say(r, "ok\n");
  } else if (strcmp(cmd, "general-error-next") == 0 || strcmp(cmd, "error-next") == 0) {
    int general = cmd[0] == 'g';
    ARGS(general ? 0 : 1, general ? 1 : 2);
    CK_RV rv = CKR_GENERAL_ERROR;
    if (!general && !(rv = parse_ckr(argv[1]))) {
      say(r, "error: error-next: '%s' is not a CKR_ name this tool knows or a non-zero number\n", argv[1]);
      return;
    }
    const char *pattern = argc == (general ? 2 : 3) ? argv[argc - 1] : "";
    if (!valid_pattern(pattern)) {
      say(r, "error: %s: '%s' names no PKCS#11 function (C_Sign, or C_Sign* for a prefix)\n", cmd, pattern);
      return;
    }
    if (!add_pending(rv, pattern)) {
      say(r, "error: %s: already %d faults pending\n", cmd, NETSIM_MAX_PENDING);
      return;
    }
    say(r, "ok\n");
  } else if (strcmp(cmd, "lose-backend") == 0 || strcmp(cmd, "restore-backend") == 0) {
    int lose = cmd[0] == 'l';
    ARGS(0, lose ? 1 : 0);
    CK_RV rv = CKR_GENERAL_ERROR;
    if (argc == 2 && !(rv = parse_ckr(argv[1]))) {
      say(r, "error: lose-backend: '%s' is not a CKR_ name this tool knows or a non-zero number\n", argv[1]);
      return;
    }
    pthread_mutex_lock(&netsim.fault_lock);
    if (lose) {
      netsim.backend_away = 1;
      netsim.backend_stuck = 1;
      netsim.backend_rv = rv;
      atomic_store(&netsim.armed, 1);
    } else {
      /* Stuck until the next C_Initialize that works: the library does not reconnect by itself. */
      netsim.backend_away = 0;
    }
    pthread_mutex_unlock(&netsim.fault_lock);
    say(r, "ok\n");
  } else if (strcmp(cmd, "set-delay") == 0) {
    ARGS(2, 2);
    int fn = strcmp(argv[1], "default") == 0 ? -1 : netsim_function_index(argv[1]);
    if (fn < 0 && strcmp(argv[1], "default") != 0) {
      say(r, "error: set-delay: '%s' is neither default nor a PKCS#11 function name\n", argv[1]);
      return;
    }
    long us;
    if (fn >= 0 && strcmp(argv[2], "default") == 0) {
      us = -1;
    } else if (parse_ulong(argv[2], 3600UL * 1000000UL, &v) == 0) {
      us = (long)v;
    } else {
      say(r, "error: set-delay: '%s' is not a delay in microseconds\n", argv[2]);
      return;
    }
    if (fn < 0)
      atomic_store(&netsim.default_us, us);
    else
      atomic_store(&netsim.delay_us[fn], us);
    say(r, "ok\n");
  } else if (strcmp(cmd, "reset") == 0) {
    ARGS(0, 0);
    netsim_reset();
    say(r, "ok\n");
  } else if (strcmp(cmd, "clear-stats") == 0) {
    ARGS(0, 0);
    for (int i = 0; i < NETSIM_NFUNCTIONS; i++) atomic_store(&netsim.calls[i], 0);
    atomic_store(&netsim.injected, 0);
    atomic_store(&netsim.max_inflight, atomic_load(&netsim.inflight));
    say(r, "ok\n");
  } else {
    say(r, "error: unknown command '%s' (try help)\n", cmd);
  }
#undef ARGS
}

void netsim_control_execute(const char *line, char *out, size_t outlen) {
  char copy[1024];
  snprintf(copy, sizeof copy, "%s", line);
  struct reply r = {out, 0, outlen};
  out[0] = 0;
  if (netsim.verbose) netsim_log("control: %s", copy);
  execute(copy, &r);
}

/* ---- The socket server ---- */

static int listen_fd = -1;
static pid_t server_pid;
static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

static void serve(int fd) {
  struct timeval tv = {.tv_sec = 10};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char in[1024];
  size_t used = 0;
  static char out[16384]; /* one connection at a time */
  for (;;) {
    ssize_t n = recv(fd, in + used, sizeof in - 1 - used, 0);
    if (n < 0 && errno == EINTR) continue;
    int eof = n <= 0;
    if (!eof) used += (size_t)n;
    in[used] = 0;
    char *nl;
    while ((nl = memchr(in, '\n', used)) || (eof && used) || used == sizeof in - 1) {
      size_t len = nl ? (size_t)(nl - in) : used;
      in[len] = 0;
      netsim_control_execute(in, out, sizeof out);
      send(fd, out, strlen(out), MSG_NOSIGNAL);
      size_t consumed = nl ? len + 1 : used;
      memmove(in, in + consumed, used - consumed);
      used -= consumed;
      in[used] = 0;
    }
    if (eof) return;
  }
}

static void *control_thread(void *arg) {
  for (;;) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EINTR && errno != ECONNABORTED) usleep(10000);
      continue;
    }
    serve(fd);
    close(fd);
  }
  return NULL;
}

static int mkdirs(const char *dir) {
  char p[NETSIM_PATH_MAX];
  snprintf(p, sizeof p, "%s", dir);
  for (char *s = p + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    if (mkdir(p, 0700) != 0 && errno != EEXIST) return -1;
    *s = '/';
  }
  return mkdir(p, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

__attribute__((destructor)) static void remove_socket(void) {
  if (server_pid && server_pid == getpid()) unlink(socket_path);
}

/* Called under init_lock by C_Initialize. Once per process (again in a forked child, which needs its own). */
int netsim_control_start(void) {
  if (server_pid == getpid()) return 0;
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  int n = snprintf(addr.sun_path, sizeof addr.sun_path, "%s/netsim-%ld.sock", netsim.control_dir, (long)getpid());
  if (n < 0 || (size_t)n >= sizeof addr.sun_path) {
    netsim_log("NETSIM_CONTROL=%s: the socket path would be longer than %zu bytes", netsim.control_dir,
               sizeof addr.sun_path - 1);
    return -1;
  }
  if (mkdirs(netsim.control_dir) != 0) {
    netsim_log("NETSIM_CONTROL=%s: %s", netsim.control_dir, strerror(errno));
    return -1;
  }
  if (listen_fd >= 0) close(listen_fd); /* inherited from the parent across fork */
  unlink(addr.sun_path);
  listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
      chmod(addr.sun_path, 0600) != 0 || listen(listen_fd, 16) != 0) {
    netsim_log("control socket %s: %s", addr.sun_path, strerror(errno));
    if (listen_fd >= 0) close(listen_fd);
    listen_fd = -1;
    return -1;
  }
  /* The thread takes no signals: they stay with the application's threads. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t tid;
  int err = pthread_create(&tid, &attr, control_thread, NULL);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err) {
    netsim_log("control thread: %s", strerror(err));
    close(listen_fd);
    listen_fd = -1;
    unlink(addr.sun_path);
    return -1;
  }
  memcpy(socket_path, addr.sun_path, sizeof socket_path);
  server_pid = getpid();
  if (netsim.verbose) netsim_log("control socket %s", socket_path);
  return 0;
}
