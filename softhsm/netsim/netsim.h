/*
 * netsim.h: state shared by the emulated network HSM's entry points (netsim.c) and its control channel
 * (control.c). A TEST TOOL: see README.md.
 */
#ifndef NETSIM_H
#define NETSIM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define SM2TOKEN_EXPORT __attribute__((visibility("default")))
#include "../sm2-token/pkcs11-min.h"

#ifndef CKR_DEVICE_REMOVED
#define CKR_DEVICE_REMOVED 0x00000032UL
#endif

/* IX_C_Initialize … IX_C_WaitForSlotEvent: a function's index in CK_FUNCTION_LIST order. */
enum netsim_function {
#define NETSIM_INDEX(name, args) IX_##name,
  SM2TOKEN_PKCS11_FUNCTIONS(NETSIM_INDEX)
#undef NETSIM_INDEX
  NETSIM_NFUNCTIONS
};

#define NETSIM_MAX_PENDING 64
#define NETSIM_PATTERN_MAX 64
#define NETSIM_PATH_MAX 4096

/* A one-shot fault: the next call whose name matches `pattern` ("" = any) answers `rv`. */
struct netsim_pending {
  CK_RV rv;
  char pattern[NETSIM_PATTERN_MAX];
};

struct netsim_state {
  /* Configuration, read once by the first C_Initialize (under init_lock). */
  pthread_mutex_t init_lock;
  int configured;
  int verbose;
  char module_path[NETSIM_PATH_MAX];
  char control_dir[NETSIM_PATH_MAX];
  void *dl;
  CK_FUNCTION_LIST_PTR _Atomic real;

  /* Delays in µs: the default and per-function overrides (-1 = use the default); the base_* copies are what the
   * configuration said, restored by `reset`. */
  _Atomic long default_us;
  _Atomic long delay_us[NETSIM_NFUNCTIONS];
  long base_default_us;
  long base_delay_us[NETSIM_NFUNCTIONS];

  /* Faults, under fault_lock; `armed` is the lock-free fast path: 0 when no fault can apply. */
  pthread_mutex_t fault_lock;
  pthread_cond_t hang_cond; /* CLOCK_MONOTONIC; broadcast whenever hang_until_ns changes */
  _Atomic int armed;
  uint64_t hang_until_ns;
  uint64_t device_error_until_ns;
  struct netsim_pending pending[NETSIM_MAX_PENDING];
  int npending;
  /* `lose-backend`: while backend_away, C_Initialize fails; while backend_stuck (until a C_Initialize that works), the
   * calls that need the backend (netsim_needs_backend) answer backend_rv. */
  int backend_away;
  int backend_stuck;
  CK_RV backend_rv;

  /* Statistics. */
  _Atomic unsigned long calls[NETSIM_NFUNCTIONS];
  _Atomic unsigned long injected;
  _Atomic long inflight;
  _Atomic long max_inflight;
};

extern struct netsim_state netsim;
extern const char *const netsim_function_name[NETSIM_NFUNCTIONS];

uint64_t netsim_now_ns(void);
/* An index for a function name ("C_Sign"), or -1. */
int netsim_function_index(const char *name);
/* Whether `pattern` ("" = any, "C_Sign" exact, "C_Sign*" prefix) matches a function name. */
int netsim_pattern_matches(const char *pattern, const char *name);

/* Whether a function needs the HSM behind the library (it computes: sign, verify, encrypt, digest, generate, wrap,
 * random …), as opposed to what a library such as tpm2-pkcs11 answers from its own state (info, slots, sessions,
 * login, objects, attributes, the *Init calls). */
int netsim_needs_backend(int fn);
/* Whether any fault can apply now (under fault_lock): `armed` may be cleared when not. */
int netsim_faults_pending(uint64_t now);

/* Marks every open session dead (CKR_SESSION_HANDLE_INVALID from now on). Unless keep_login, their real sessions
 * are closed as soon as no call is using them (the module logs the user out when its last session closes).
 * Returns the number of sessions invalidated. */
unsigned long netsim_invalidate_sessions(int keep_login);
/* Open and dead-but-not-closed session counts. */
void netsim_session_counts(unsigned long *live, unsigned long *dead, unsigned long *invalidated_total);

/* control.c: starts the control thread serving <control_dir>/netsim-<pid>.sock (once per process). */
int netsim_control_start(void);
/* Runs one control command line; writes the reply (lines, the last one "ok…" or "error…") into out. */
void netsim_control_execute(const char *line, char *out, size_t outlen);
/* Faults back to none, delays back to the configuration. */
void netsim_reset(void);

void netsim_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* NETSIM_H */
