/*
 * netsim.c: an emulated network HSM, a PKCS#11 v2.40 module that forwards every call to a real module (SoftHSMv2 by
 * default) after a configurable delay, and injects faults on command (control.c). A TEST TOOL: see README.md.
 *
 * Every entry point except C_GetFunctionList and C_Finalize (local calls, never delayed or faulted) goes through
 * call_begin():
 *   1. a call entering while a `hang` window is open waits (condition variable) until the window closes;
 *   2. it sleeps its delay (clock_nanosleep: the calling thread blocks, as on a network round trip);
 *   3. then a fault, if any: CKR_DEVICE_ERROR inside a `device-error` window, else the first pending one-shot
 *      error whose function pattern matches, else, after `lose-backend`, the backend's error for a call that needs
 *      the backend (until a C_Initialize works again).
 * A faulted call normally does not reach the module. Calls that end an operation (single-part and Final
 * functions, the Update functions, C_FindObjectsFinal, C_CloseSession, C_CloseAllSessions) are forwarded anyway and
 * their answer replaced, so that the module's state is what PKCS#11 tells the caller to assume after an error (the
 * operation is over): a C_SignInit after a faulted C_Sign works instead of answering CKR_OPERATION_ACTIVE.
 *
 * Session handles are the emulator's own (1, 2, 3, … never reused), mapped to the module's: `invalidate-sessions`
 * marks them dead, and a handle the module reuses later can never revive an old one.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "netsim.h"

#define DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

struct netsim_state netsim = {
    .init_lock = PTHREAD_MUTEX_INITIALIZER,
    .fault_lock = PTHREAD_MUTEX_INITIALIZER,
};

const char *const netsim_function_name[NETSIM_NFUNCTIONS] = {
#define NETSIM_NAME(name, args) #name,
    SM2TOKEN_PKCS11_FUNCTIONS(NETSIM_NAME)
#undef NETSIM_NAME
};

static const size_t function_offset[NETSIM_NFUNCTIONS] = {
#define NETSIM_OFFSET(name, args) offsetof(CK_FUNCTION_LIST, name),
    SM2TOKEN_PKCS11_FUNCTIONS(NETSIM_OFFSET)
#undef NETSIM_OFFSET
};

void netsim_log(const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "netsim[%ld]: %s\n", (long)getpid(), line);
}

uint64_t netsim_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t deadline_ns) {
  struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000u), .tv_nsec = (long)(deadline_ns % 1000000000u)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

int netsim_function_index(const char *name) {
  for (int i = 0; i < NETSIM_NFUNCTIONS; i++)
    if (strcmp(netsim_function_name[i], name) == 0) return i;
  return -1;
}

int netsim_pattern_matches(const char *pattern, const char *name) {
  size_t n = strlen(pattern);
  if (n == 0) return 1;
  if (pattern[n - 1] == '*') return strncmp(pattern, name, n - 1) == 0;
  return strcmp(pattern, name) == 0;
}

/* ---- Configuration: NETSIM_CONFIG file, then environment variables (which win) ---- */

static int parse_us(const char *s, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < 0 || v > 3600L * 1000000L) return -1;
  *out = v;
  return 0;
}

/* `key value`: module, control, default, or a function name. */
static int apply_setting(const char *key, const char *value, const char *where) {
  if (strcmp(key, "module") == 0 || strcmp(key, "control") == 0) {
    char *dst = key[0] == 'm' ? netsim.module_path : netsim.control_dir;
    if (strlen(value) >= NETSIM_PATH_MAX) {
      netsim_log("%s: %s is too long", where, key);
      return -1;
    }
    strcpy(dst, value);
    return 0;
  }
  long us;
  if (parse_us(value, &us) != 0) {
    netsim_log("%s: %s: '%s' is not a delay in microseconds (0 to 3600000000)", where, key, value);
    return -1;
  }
  if (strcmp(key, "default") == 0) {
    netsim.base_default_us = us;
    return 0;
  }
  int fn = netsim_function_index(key);
  if (fn < 0) {
    netsim_log("%s: unknown setting '%s' (module, control, default or a PKCS#11 function name such as C_Sign)", where,
               key);
    return -1;
  }
  netsim.base_delay_us[fn] = us;
  return 0;
}

static int read_config_file(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    netsim_log("NETSIM_CONFIG=%s: %s", path, strerror(errno));
    return -1;
  }
  char line[NETSIM_PATH_MAX + 128];
  int lineno = 0, rc = 0;
  while (rc == 0 && fgets(line, sizeof line, f)) {
    lineno++;
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    char *key = strtok(line, " \t\r\n");
    if (!key) continue;
    char *value = strtok(NULL, "\r\n");
    while (value && (*value == ' ' || *value == '\t')) value++;
    if (value) {
      size_t n = strlen(value);
      while (n && (value[n - 1] == ' ' || value[n - 1] == '\t')) value[--n] = 0;
    }
    char where[NETSIM_PATH_MAX + 32];
    snprintf(where, sizeof where, "%s:%d", path, lineno);
    if (!value || !*value) {
      netsim_log("%s: '%s' needs a value", where, key);
      rc = -1;
    } else {
      rc = apply_setting(key, value, where);
    }
  }
  fclose(f);
  return rc;
}

static int load_configuration(void) {
  strcpy(netsim.module_path, DEFAULT_MODULE);
  netsim.control_dir[0] = 0;
  netsim.base_default_us = 0;
  for (int i = 0; i < NETSIM_NFUNCTIONS; i++) netsim.base_delay_us[i] = -1;

  const char *v;
  if ((v = getenv("NETSIM_CONFIG")) && *v && read_config_file(v) != 0) return -1;
  if ((v = getenv("NETSIM_MODULE")) && *v && apply_setting("module", v, "NETSIM_MODULE") != 0) return -1;
  if ((v = getenv("NETSIM_CONTROL")) && *v && apply_setting("control", v, "NETSIM_CONTROL") != 0) return -1;
  if ((v = getenv("NETSIM_DELAY_US")) && *v && apply_setting("default", v, "NETSIM_DELAY_US") != 0) return -1;
  for (int i = 0; i < NETSIM_NFUNCTIONS; i++) {
    char name[64];
    snprintf(name, sizeof name, "NETSIM_DELAY_%s", netsim_function_name[i]);
    if ((v = getenv(name)) && *v && apply_setting(netsim_function_name[i], v, name) != 0) return -1;
  }
  v = getenv("NETSIM_VERBOSE");
  netsim.verbose = v && *v && strcmp(v, "0") != 0;

  atomic_store(&netsim.default_us, netsim.base_default_us);
  for (int i = 0; i < NETSIM_NFUNCTIONS; i++) atomic_store(&netsim.delay_us[i], netsim.base_delay_us[i]);
  return 0;
}

static int load_module(void) {
  /* RTLD_LOCAL: the module's C_* symbols stay out of the global scope (ours are exported too). Never dlclose'd. */
  void *dl = dlopen(netsim.module_path, RTLD_NOW | RTLD_LOCAL);
  if (!dl) {
    netsim_log("cannot load the real module %s: %s", netsim.module_path, dlerror());
    return -1;
  }
  CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
  CK_FUNCTION_LIST_PTR list = NULL;
  if (!get || get(&list) != CKR_OK || !list) {
    netsim_log("%s: no usable C_GetFunctionList", netsim.module_path);
    dlclose(dl);
    return -1;
  }
  if (list->version.major != 2) {
    netsim_log("%s: function list version %d.%d, expected 2.x", netsim.module_path, list->version.major,
               list->version.minor);
    dlclose(dl);
    return -1;
  }
  netsim.dl = dl;
  atomic_store(&netsim.real, list);
  return 0;
}

static CK_FUNCTION_LIST_PTR real(void) { return atomic_load(&netsim.real); }

/* hang_cond waits on CLOCK_MONOTONIC deadlines. */
__attribute__((constructor)) static void netsim_load(void) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&netsim.hang_cond, &attr);
  pthread_condattr_destroy(&attr);
}

static int real_has(int fn) {
  CK_FUNCTION_LIST_PTR r = real();
  void (*p)(void);
  if (!r) return 0;
  memcpy(&p, (const char *)r + function_offset[fn], sizeof p);
  return p != NULL;
}

/* ---- Sessions: the emulator's handles mapped to the module's ---- */

struct sess {
  struct sess *next;
  CK_SESSION_HANDLE handle; /* ours */
  CK_SESSION_HANDLE real;   /* the module's */
  CK_SLOT_ID slot;
  unsigned refs;          /* calls using the real session now */
  unsigned char dead;     /* answers CKR_SESSION_HANDLE_INVALID */
  unsigned char closing;  /* dead: close the real session when refs drops to 0 */
  unsigned char closed;   /* the real session is closed (or being closed) */
  unsigned char unlinked; /* out of the table: freed when refs drops to 0 */
  CK_NOTIFY notify;       /* the caller's callback and argument (the module calls notify_trampoline) */
  CK_VOID_PTR application;
};

#define BUCKETS 1024
static pthread_mutex_t sess_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sess *table[BUCKETS];
static CK_SESSION_HANDLE next_handle = 1;
static unsigned long live_sessions, dead_sessions, invalidated_total;

static struct sess *find_locked(CK_SESSION_HANDLE h) {
  for (struct sess *s = table[h % BUCKETS]; s; s = s->next)
    if (s->handle == h) return s;
  return NULL;
}

static void unlink_locked(struct sess *s) {
  struct sess **pp = &table[s->handle % BUCKETS];
  while (*pp != s) pp = &(*pp)->next;
  *pp = s->next;
  s->unlinked = 1;
  if (s->dead)
    dead_sessions--;
  else
    live_sessions--;
}

/* A live session, held (refs) until sess_release; NULL for an unknown or dead handle. */
static struct sess *sess_acquire(CK_SESSION_HANDLE h) {
  pthread_mutex_lock(&sess_lock);
  struct sess *s = find_locked(h);
  if (s && s->dead) s = NULL;
  if (s) s->refs++;
  pthread_mutex_unlock(&sess_lock);
  return s;
}

static void sess_release(struct sess *s) {
  pthread_mutex_lock(&sess_lock);
  s->refs--;
  int close_real = s->refs == 0 && s->closing && !s->closed;
  if (close_real) s->closed = 1;
  int free_it = s->refs == 0 && s->unlinked;
  CK_SESSION_HANDLE real_handle = s->real;
  pthread_mutex_unlock(&sess_lock);
  if (close_real) real()->C_CloseSession(real_handle);
  if (free_it) free(s);
}

unsigned long netsim_invalidate_sessions(int keep_login) {
  unsigned long n = 0, nclose = 0, cap = 0;
  CK_SESSION_HANDLE *to_close = NULL;
  pthread_mutex_lock(&sess_lock);
  if (!keep_login && live_sessions) {
    to_close = malloc(live_sessions * sizeof *to_close);
    cap = to_close ? live_sessions : 0; /* without memory, each stays open until its handle is closed */
  }
  for (int b = 0; b < BUCKETS; b++)
    for (struct sess *s = table[b]; s; s = s->next) {
      if (s->dead) continue;
      s->dead = 1;
      live_sessions--;
      dead_sessions++;
      n++;
      if (keep_login || s->closed) continue;
      if (s->refs > 0)
        s->closing = 1; /* the last call using it closes it (sess_release) */
      else if (nclose < cap)
        s->closed = 1, to_close[nclose++] = s->real;
    }
  invalidated_total += n;
  pthread_mutex_unlock(&sess_lock);
  for (unsigned long i = 0; i < nclose; i++) real()->C_CloseSession(to_close[i]);
  free(to_close);
  return n;
}

void netsim_session_counts(unsigned long *live, unsigned long *dead, unsigned long *invalidated) {
  pthread_mutex_lock(&sess_lock);
  *live = live_sessions;
  *dead = dead_sessions;
  *invalidated = invalidated_total;
  pthread_mutex_unlock(&sess_lock);
}

/* Drops every table entry (of one slot, or all): their real sessions are already gone. */
static void forget_sessions(int all, CK_SLOT_ID slot) {
  pthread_mutex_lock(&sess_lock);
  for (int b = 0; b < BUCKETS; b++) {
    struct sess *s = table[b];
    while (s) {
      struct sess *next = s->next;
      if (all || s->slot == slot) {
        s->closed = 1;
        unlink_locked(s);
        if (s->refs == 0) free(s);
      }
      s = next;
    }
  }
  pthread_mutex_unlock(&sess_lock);
}

static CK_RV notify_trampoline(CK_SESSION_HANDLE real_handle, CK_NOTIFICATION event, CK_VOID_PTR application) {
  struct sess *s = application;
  return s->notify(s->handle, event, s->application);
}

/* ---- Delay and faults ---- */

struct call {
  int fn;
  CK_RV inject; /* the fault this call answers, or CKR_OK */
};

/* Waits out a hang window, sleeps the delay, picks the fault. Returns non-OK when the call cannot run at all. */
static CK_RV call_begin(struct call *c, int fn) {
  c->fn = fn;
  c->inject = CKR_OK;
  atomic_fetch_add(&netsim.calls[fn], 1);
  long now_in = atomic_fetch_add(&netsim.inflight, 1) + 1;
  long max = atomic_load(&netsim.max_inflight);
  while (now_in > max && !atomic_compare_exchange_weak(&netsim.max_inflight, &max, now_in)) {
  }
  if (!real()) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (!real_has(fn)) return CKR_FUNCTION_NOT_SUPPORTED;

  if (atomic_load(&netsim.armed)) {
    pthread_mutex_lock(&netsim.fault_lock);
    uint64_t now;
    while ((now = netsim_now_ns()) < netsim.hang_until_ns) {
      uint64_t until = netsim.hang_until_ns;
      struct timespec ts = {.tv_sec = (time_t)(until / 1000000000u), .tv_nsec = (long)(until % 1000000000u)};
      pthread_cond_timedwait(&netsim.hang_cond, &netsim.fault_lock, &ts);
    }
    pthread_mutex_unlock(&netsim.fault_lock);
  }

  long us = atomic_load(&netsim.delay_us[fn]);
  if (us < 0) us = atomic_load(&netsim.default_us);
  if (us > 0) sleep_until(netsim_now_ns() + (uint64_t)us * 1000u);

  if (atomic_load(&netsim.armed)) {
    pthread_mutex_lock(&netsim.fault_lock);
    uint64_t now = netsim_now_ns();
    if (now < netsim.device_error_until_ns) {
      c->inject = CKR_DEVICE_ERROR;
    } else {
      for (int i = 0; i < netsim.npending; i++) {
        if (!netsim_pattern_matches(netsim.pending[i].pattern, netsim_function_name[fn])) continue;
        c->inject = netsim.pending[i].rv;
        memmove(&netsim.pending[i], &netsim.pending[i + 1], (size_t)(netsim.npending - i - 1) * sizeof netsim.pending[0]);
        netsim.npending--;
        break;
      }
      if (c->inject == CKR_OK && netsim.backend_stuck && netsim_needs_backend(fn)) c->inject = netsim.backend_rv;
    }
    if (!netsim_faults_pending(now)) atomic_store(&netsim.armed, 0);
    pthread_mutex_unlock(&netsim.fault_lock);
    if (c->inject != CKR_OK) {
      atomic_fetch_add(&netsim.injected, 1);
      if (netsim.verbose) netsim_log("%s answers 0x%lx (injected)", netsim_function_name[fn], c->inject);
    }
  }
  return CKR_OK;
}

/* The calls that reach the HSM behind a library that keeps sessions, login and objects itself (tpm2-pkcs11: a TPM
 * command each). The *Init calls are not among them: tpm2-pkcs11 checks and records an operation locally. */
static const char *const BACKEND_FUNCTIONS[] = {
    "C_Encrypt",        "C_EncryptUpdate",      "C_EncryptFinal",        "C_Decrypt",          "C_DecryptUpdate",
    "C_DecryptFinal",   "C_Digest",             "C_DigestUpdate",        "C_DigestKey",        "C_DigestFinal",
    "C_Sign",           "C_SignUpdate",         "C_SignFinal",           "C_SignRecover",      "C_Verify",
    "C_VerifyUpdate",   "C_VerifyFinal",        "C_VerifyRecover",       "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate", "C_SignEncryptUpdate", "C_DecryptVerifyUpdate", "C_GenerateKey",  "C_GenerateKeyPair",
    "C_WrapKey",        "C_UnwrapKey",          "C_DeriveKey",           "C_SeedRandom",       "C_GenerateRandom",
};
static unsigned char needs_backend[NETSIM_NFUNCTIONS];
static pthread_once_t needs_backend_once = PTHREAD_ONCE_INIT;

static void init_needs_backend(void) {
  for (size_t i = 0; i < sizeof BACKEND_FUNCTIONS / sizeof BACKEND_FUNCTIONS[0]; i++) {
    int fn = netsim_function_index(BACKEND_FUNCTIONS[i]);
    if (fn >= 0) needs_backend[fn] = 1;
  }
}

int netsim_needs_backend(int fn) {
  pthread_once(&needs_backend_once, init_needs_backend);
  return fn >= 0 && fn < NETSIM_NFUNCTIONS && needs_backend[fn];
}

int netsim_faults_pending(uint64_t now) {
  return netsim.npending > 0 || now < netsim.device_error_until_ns || now < netsim.hang_until_ns || netsim.backend_away ||
         netsim.backend_stuck;
}

static CK_RV call_end(struct call *c, CK_RV rv) {
  atomic_fetch_sub(&netsim.inflight, 1);
  return rv;
}

void netsim_reset(void) {
  pthread_mutex_lock(&netsim.fault_lock);
  netsim.hang_until_ns = 0;
  netsim.device_error_until_ns = 0;
  netsim.npending = 0;
  netsim.backend_away = 0;
  netsim.backend_stuck = 0;
  atomic_store(&netsim.armed, 0);
  pthread_cond_broadcast(&netsim.hang_cond);
  pthread_mutex_unlock(&netsim.fault_lock);
  atomic_store(&netsim.default_us, netsim.base_default_us);
  for (int i = 0; i < NETSIM_NFUNCTIONS; i++) atomic_store(&netsim.delay_us[i], netsim.base_delay_us[i]);
}

/* ---- Forwarding ---- */

#define EXPORT __attribute__((visibility("default")))

/* A call without a session: a fault answers without reaching the module. */
#define FORWARD(fn, ...)                                                  \
  do {                                                                    \
    struct call c_;                                                       \
    CK_RV rv_ = call_begin(&c_, IX_##fn);                                 \
    if (rv_ == CKR_OK) rv_ = c_.inject ? c_.inject : real()->fn(__VA_ARGS__); \
    return call_end(&c_, rv_);                                            \
  } while (0)

/* A call on a session: a fault answers without reaching the module; a dead handle is CKR_SESSION_HANDLE_INVALID. */
#define FORWARD_S(fn, h, ...)                                      \
  do {                                                             \
    struct call c_;                                                \
    CK_RV rv_ = call_begin(&c_, IX_##fn);                          \
    if (rv_ == CKR_OK) {                                           \
      if (c_.inject) {                                             \
        rv_ = c_.inject;                                           \
      } else {                                                     \
        struct sess *s_ = sess_acquire(h);                         \
        if (!s_) {                                                 \
          rv_ = CKR_SESSION_HANDLE_INVALID;                        \
        } else {                                                   \
          rv_ = real()->fn(s_->real, ##__VA_ARGS__);               \
          sess_release(s_);                                        \
        }                                                          \
      }                                                            \
    }                                                              \
    return call_end(&c_, rv_);                                     \
  } while (0)

/*
 * A call that ends an operation: forwarded even when faulted, then `finish` (which may complete an operation the
 * call left open: a length query or CKR_BUFFER_TOO_SMALL) and the fault replaces the answer.
 */
#define FORWARD_END(fn, finish, h, ...)                                \
  do {                                                                 \
    struct call c_;                                                    \
    CK_RV rv_ = call_begin(&c_, IX_##fn);                              \
    if (rv_ == CKR_OK) {                                               \
      struct sess *s_ = sess_acquire(h);                               \
      if (!s_) {                                                       \
        rv_ = c_.inject ? c_.inject : CKR_SESSION_HANDLE_INVALID;      \
      } else {                                                         \
        rv_ = real()->fn(s_->real, ##__VA_ARGS__);                     \
        if (c_.inject) {                                               \
          finish;                                                      \
          rv_ = c_.inject;                                             \
        }                                                              \
        sess_release(s_);                                              \
      }                                                                \
    }                                                                  \
    return call_end(&c_, rv_);                                         \
  } while (0)

/* finish for a call with output (…, out, outLen): if it left the operation open, run it to the end into a scratch
 * buffer. `...` is the arguments before the output, each followed by a comma. */
#define COMPLETE(fn, out, out_len, ...)                                          \
  if ((rv_ == CKR_OK && (out) == NULL) || rv_ == CKR_BUFFER_TOO_SMALL) {         \
    CK_ULONG n_ = 0;                                                             \
    if (real()->fn(s_->real, __VA_ARGS__ NULL, &n_) == CKR_OK) {                 \
      CK_BYTE_PTR b_ = malloc(n_ ? n_ : 1);                                      \
      if (b_) real()->fn(s_->real, __VA_ARGS__ b_, &n_);                         \
      free(b_);                                                                  \
    }                                                                            \
  }
#define NOTHING ((void)0)

EXPORT CK_RV C_Initialize(CK_VOID_PTR pInitArgs) {
  pthread_mutex_lock(&netsim.init_lock);
  int ok = netsim.configured;
  if (!ok && load_configuration() == 0 && load_module() == 0) {
    netsim.configured = ok = 1;
    if (netsim.verbose)
      netsim_log("forwarding to %s, default delay %ld us, control %s", netsim.module_path, netsim.base_default_us,
                 netsim.control_dir[0] ? netsim.control_dir : "(none)");
  }
  if (ok && netsim.control_dir[0]) {
    CK_C_INITIALIZE_ARGS *args = pInitArgs;
    if (args && (args->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS))
      netsim_log("CKF_LIBRARY_CANT_CREATE_OS_THREADS: no control channel");
    else if (netsim_control_start() != 0)
      ok = 0;
  }
  pthread_mutex_unlock(&netsim.init_lock);
  if (!ok) return CKR_GENERAL_ERROR;
  struct call c;
  CK_RV rv = call_begin(&c, IX_C_Initialize);
  if (rv == CKR_OK && !c.inject && atomic_load(&netsim.armed)) {
    /* `lose-backend`: a library that cannot reach its backend fails to initialize (tpm2-pkcs11 without tpm2-abrmd:
     * CKR_GENERAL_ERROR); once the backend is back, an initialization that works connects to it again. */
    pthread_mutex_lock(&netsim.fault_lock);
    if (netsim.backend_away) c.inject = CKR_GENERAL_ERROR;
    pthread_mutex_unlock(&netsim.fault_lock);
    if (c.inject) {
      atomic_fetch_add(&netsim.injected, 1);
      if (netsim.verbose) netsim_log("C_Initialize answers 0x%lx (the backend is away)", c.inject);
    }
  }
  if (rv == CKR_OK) rv = c.inject ? c.inject : real()->C_Initialize(pInitArgs);
  if (rv == CKR_OK && atomic_load(&netsim.armed)) {
    pthread_mutex_lock(&netsim.fault_lock);
    if (!netsim.backend_away) netsim.backend_stuck = 0;
    pthread_mutex_unlock(&netsim.fault_lock);
  }
  return call_end(&c, rv);
}

/* Local: never delayed or faulted, so that a caller can always start over. */
EXPORT CK_RV C_Finalize(CK_VOID_PTR pReserved) {
  if (!real()) return CKR_CRYPTOKI_NOT_INITIALIZED;
  atomic_fetch_add(&netsim.calls[IX_C_Finalize], 1);
  CK_RV rv = real()->C_Finalize(pReserved);
  if (rv == CKR_OK) forget_sessions(1, 0);
  return rv;
}

EXPORT CK_RV C_GetInfo(CK_INFO_PTR pInfo) { FORWARD(C_GetInfo, pInfo); }

static CK_FUNCTION_LIST function_list = {
    .version = {2, 40},
#define NETSIM_ENTRY(name, args) .name = name,
    SM2TOKEN_PKCS11_FUNCTIONS(NETSIM_ENTRY)
#undef NETSIM_ENTRY
};

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) {
  if (!ppFunctionList) return CKR_ARGUMENTS_BAD;
  *ppFunctionList = &function_list;
  return CKR_OK;
}

EXPORT CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount) {
  FORWARD(C_GetSlotList, tokenPresent, pSlotList, pulCount);
}
EXPORT CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo) { FORWARD(C_GetSlotInfo, slotID, pInfo); }
EXPORT CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo) { FORWARD(C_GetTokenInfo, slotID, pInfo); }
EXPORT CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount) {
  FORWARD(C_GetMechanismList, slotID, pMechanismList, pulCount);
}
EXPORT CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo) {
  FORWARD(C_GetMechanismInfo, slotID, type, pInfo);
}
EXPORT CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel) {
  FORWARD(C_InitToken, slotID, pPin, ulPinLen, pLabel);
}
EXPORT CK_RV C_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen) {
  FORWARD_S(C_InitPIN, hSession, pPin, ulPinLen);
}
EXPORT CK_RV C_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin,
                      CK_ULONG ulNewLen) {
  FORWARD_S(C_SetPIN, hSession, pOldPin, ulOldLen, pNewPin, ulNewLen);
}

EXPORT CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
                           CK_SESSION_HANDLE_PTR phSession) {
  struct call c;
  CK_RV rv = call_begin(&c, IX_C_OpenSession);
  if (rv == CKR_OK && c.inject) rv = c.inject;
  if (rv == CKR_OK && !phSession) rv = CKR_ARGUMENTS_BAD;
  struct sess *s = NULL;
  if (rv == CKR_OK && !(s = calloc(1, sizeof *s))) rv = CKR_HOST_MEMORY;
  if (rv == CKR_OK) {
    s->slot = slotID;
    s->notify = Notify;
    s->application = pApplication;
    rv = real()->C_OpenSession(slotID, flags, Notify ? (CK_VOID_PTR)s : pApplication,
                               Notify ? notify_trampoline : NULL, &s->real);
  }
  if (rv == CKR_OK) {
    pthread_mutex_lock(&sess_lock);
    s->handle = next_handle++;
    s->next = table[s->handle % BUCKETS];
    table[s->handle % BUCKETS] = s;
    live_sessions++;
    pthread_mutex_unlock(&sess_lock);
    *phSession = s->handle;
  } else {
    free(s);
  }
  return call_end(&c, rv);
}

/* Ends an operation (forwarded even when faulted). A dead handle answers CKR_SESSION_HANDLE_INVALID and is
 * forgotten; its real session is closed if it was still open. */
EXPORT CK_RV C_CloseSession(CK_SESSION_HANDLE hSession) {
  struct call c;
  CK_RV rv = call_begin(&c, IX_C_CloseSession);
  if (rv != CKR_OK) return call_end(&c, rv);
  pthread_mutex_lock(&sess_lock);
  struct sess *s = find_locked(hSession);
  int was_dead = 0, close_real = 0, free_it = 0;
  CK_SESSION_HANDLE real_handle = 0;
  if (s) {
    was_dead = s->dead;
    close_real = !s->closed;
    s->closed = 1;
    real_handle = s->real;
    unlink_locked(s);
    s->dead = 1;
    free_it = s->refs == 0; /* else a call still using it frees it (sess_release) */
  }
  int found = s != NULL;
  pthread_mutex_unlock(&sess_lock);
  if (free_it) free(s);
  CK_RV real_rv = close_real ? real()->C_CloseSession(real_handle) : CKR_OK;
  if (c.inject)
    rv = c.inject;
  else if (!found || was_dead)
    rv = CKR_SESSION_HANDLE_INVALID;
  else
    rv = real_rv;
  return call_end(&c, rv);
}

EXPORT CK_RV C_CloseAllSessions(CK_SLOT_ID slotID) {
  struct call c;
  CK_RV rv = call_begin(&c, IX_C_CloseAllSessions);
  if (rv != CKR_OK) return call_end(&c, rv);
  rv = real()->C_CloseAllSessions(slotID);
  if (rv == CKR_OK) forget_sessions(0, slotID);
  return call_end(&c, c.inject ? c.inject : rv);
}

EXPORT CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo) {
  FORWARD_S(C_GetSessionInfo, hSession, pInfo);
}
EXPORT CK_RV C_GetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState,
                                 CK_ULONG_PTR pulOperationStateLen) {
  FORWARD_S(C_GetOperationState, hSession, pOperationState, pulOperationStateLen);
}
EXPORT CK_RV C_SetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState,
                                 CK_ULONG ulOperationStateLen, CK_OBJECT_HANDLE hEncryptionKey,
                                 CK_OBJECT_HANDLE hAuthenticationKey) {
  FORWARD_S(C_SetOperationState, hSession, pOperationState, ulOperationStateLen, hEncryptionKey, hAuthenticationKey);
}
EXPORT CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen) {
  FORWARD_S(C_Login, hSession, userType, pPin, ulPinLen);
}
EXPORT CK_RV C_Logout(CK_SESSION_HANDLE hSession) { FORWARD_S(C_Logout, hSession); }
EXPORT CK_RV C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                            CK_OBJECT_HANDLE_PTR phObject) {
  FORWARD_S(C_CreateObject, hSession, pTemplate, ulCount, phObject);
}
EXPORT CK_RV C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                          CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject) {
  FORWARD_S(C_CopyObject, hSession, hObject, pTemplate, ulCount, phNewObject);
}
EXPORT CK_RV C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject) {
  FORWARD_S(C_DestroyObject, hSession, hObject);
}
EXPORT CK_RV C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize) {
  FORWARD_S(C_GetObjectSize, hSession, hObject, pulSize);
}
EXPORT CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                                 CK_ULONG ulCount) {
  FORWARD_S(C_GetAttributeValue, hSession, hObject, pTemplate, ulCount);
}
EXPORT CK_RV C_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                                 CK_ULONG ulCount) {
  FORWARD_S(C_SetAttributeValue, hSession, hObject, pTemplate, ulCount);
}
EXPORT CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount) {
  FORWARD_S(C_FindObjectsInit, hSession, pTemplate, ulCount);
}
EXPORT CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount,
                           CK_ULONG_PTR pulObjectCount) {
  FORWARD_S(C_FindObjects, hSession, phObject, ulMaxObjectCount, pulObjectCount);
}
EXPORT CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession) { FORWARD_END(C_FindObjectsFinal, NOTHING, hSession); }

EXPORT CK_RV C_EncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  FORWARD_S(C_EncryptInit, hSession, pMechanism, hKey);
}
EXPORT CK_RV C_Encrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData,
                       CK_ULONG_PTR pulEncryptedDataLen) {
  FORWARD_END(C_Encrypt, COMPLETE(C_Encrypt, pEncryptedData, pulEncryptedDataLen, pData, ulDataLen, ), hSession, pData,
              ulDataLen, pEncryptedData, pulEncryptedDataLen);
}
EXPORT CK_RV C_EncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen,
                             CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen) {
  FORWARD_END(C_EncryptUpdate, NOTHING, hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen);
}
EXPORT CK_RV C_EncryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart,
                            CK_ULONG_PTR pulLastEncryptedPartLen) {
  FORWARD_END(C_EncryptFinal, COMPLETE(C_EncryptFinal, pLastEncryptedPart, pulLastEncryptedPartLen, ), hSession,
              pLastEncryptedPart, pulLastEncryptedPartLen);
}
EXPORT CK_RV C_DecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  FORWARD_S(C_DecryptInit, hSession, pMechanism, hKey);
}
EXPORT CK_RV C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen,
                       CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen) {
  FORWARD_END(C_Decrypt, COMPLETE(C_Decrypt, pData, pulDataLen, pEncryptedData, ulEncryptedDataLen, ), hSession,
              pEncryptedData, ulEncryptedDataLen, pData, pulDataLen);
}
EXPORT CK_RV C_DecryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen,
                             CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen) {
  FORWARD_END(C_DecryptUpdate, NOTHING, hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen);
}
EXPORT CK_RV C_DecryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen) {
  FORWARD_END(C_DecryptFinal, COMPLETE(C_DecryptFinal, pLastPart, pulLastPartLen, ), hSession, pLastPart,
              pulLastPartLen);
}
EXPORT CK_RV C_DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism) {
  FORWARD_S(C_DigestInit, hSession, pMechanism);
}
EXPORT CK_RV C_Digest(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest,
                      CK_ULONG_PTR pulDigestLen) {
  FORWARD_END(C_Digest, COMPLETE(C_Digest, pDigest, pulDigestLen, pData, ulDataLen, ), hSession, pData, ulDataLen,
              pDigest, pulDigestLen);
}
EXPORT CK_RV C_DigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) {
  FORWARD_END(C_DigestUpdate, NOTHING, hSession, pPart, ulPartLen);
}
EXPORT CK_RV C_DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey) {
  FORWARD_END(C_DigestKey, NOTHING, hSession, hKey);
}
EXPORT CK_RV C_DigestFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen) {
  FORWARD_END(C_DigestFinal, COMPLETE(C_DigestFinal, pDigest, pulDigestLen, ), hSession, pDigest, pulDigestLen);
}
EXPORT CK_RV C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  FORWARD_S(C_SignInit, hSession, pMechanism, hKey);
}
EXPORT CK_RV C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                    CK_ULONG_PTR pulSignatureLen) {
  FORWARD_END(C_Sign, COMPLETE(C_Sign, pSignature, pulSignatureLen, pData, ulDataLen, ), hSession, pData, ulDataLen,
              pSignature, pulSignatureLen);
}
EXPORT CK_RV C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) {
  FORWARD_END(C_SignUpdate, NOTHING, hSession, pPart, ulPartLen);
}
EXPORT CK_RV C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen) {
  FORWARD_END(C_SignFinal, COMPLETE(C_SignFinal, pSignature, pulSignatureLen, ), hSession, pSignature,
              pulSignatureLen);
}
EXPORT CK_RV C_SignRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  FORWARD_S(C_SignRecoverInit, hSession, pMechanism, hKey);
}
EXPORT CK_RV C_SignRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                           CK_ULONG_PTR pulSignatureLen) {
  FORWARD_END(C_SignRecover, COMPLETE(C_SignRecover, pSignature, pulSignatureLen, pData, ulDataLen, ), hSession, pData,
              ulDataLen, pSignature, pulSignatureLen);
}
EXPORT CK_RV C_VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  FORWARD_S(C_VerifyInit, hSession, pMechanism, hKey);
}
EXPORT CK_RV C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                      CK_ULONG ulSignatureLen) {
  FORWARD_END(C_Verify, NOTHING, hSession, pData, ulDataLen, pSignature, ulSignatureLen);
}
EXPORT CK_RV C_VerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen) {
  FORWARD_END(C_VerifyUpdate, NOTHING, hSession, pPart, ulPartLen);
}
EXPORT CK_RV C_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen) {
  FORWARD_END(C_VerifyFinal, NOTHING, hSession, pSignature, ulSignatureLen);
}
EXPORT CK_RV C_VerifyRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  FORWARD_S(C_VerifyRecoverInit, hSession, pMechanism, hKey);
}
EXPORT CK_RV C_VerifyRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen,
                             CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen) {
  FORWARD_END(C_VerifyRecover, COMPLETE(C_VerifyRecover, pData, pulDataLen, pSignature, ulSignatureLen, ), hSession,
              pSignature, ulSignatureLen, pData, pulDataLen);
}
EXPORT CK_RV C_DigestEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen,
                                   CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen) {
  FORWARD_END(C_DigestEncryptUpdate, NOTHING, hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen);
}
EXPORT CK_RV C_DecryptDigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart,
                                   CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen) {
  FORWARD_END(C_DecryptDigestUpdate, NOTHING, hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen);
}
EXPORT CK_RV C_SignEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen,
                                 CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen) {
  FORWARD_END(C_SignEncryptUpdate, NOTHING, hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen);
}
EXPORT CK_RV C_DecryptVerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart,
                                   CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen) {
  FORWARD_END(C_DecryptVerifyUpdate, NOTHING, hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen);
}
EXPORT CK_RV C_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate,
                           CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey) {
  FORWARD_S(C_GenerateKey, hSession, pMechanism, pTemplate, ulCount, phKey);
}
EXPORT CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                               CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount,
                               CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount,
                               CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey) {
  FORWARD_S(C_GenerateKeyPair, hSession, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount,
            pPrivateKeyTemplate, ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey);
}
EXPORT CK_RV C_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey,
                       CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen) {
  FORWARD_S(C_WrapKey, hSession, pMechanism, hWrappingKey, hKey, pWrappedKey, pulWrappedKeyLen);
}
EXPORT CK_RV C_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey,
                         CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate,
                         CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey) {
  FORWARD_S(C_UnwrapKey, hSession, pMechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, pTemplate,
            ulAttributeCount, phKey);
}
EXPORT CK_RV C_DeriveKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey,
                         CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey) {
  FORWARD_S(C_DeriveKey, hSession, pMechanism, hBaseKey, pTemplate, ulAttributeCount, phKey);
}
EXPORT CK_RV C_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen) {
  FORWARD_S(C_SeedRandom, hSession, pSeed, ulSeedLen);
}
EXPORT CK_RV C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen) {
  FORWARD_S(C_GenerateRandom, hSession, RandomData, ulRandomLen);
}
EXPORT CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE hSession) { FORWARD_S(C_GetFunctionStatus, hSession); }
EXPORT CK_RV C_CancelFunction(CK_SESSION_HANDLE hSession) { FORWARD_S(C_CancelFunction, hSession); }
EXPORT CK_RV C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved) {
  FORWARD(C_WaitForSlotEvent, flags, pSlot, pReserved);
}
