/*
 * async_pkcs11.node: PKCS#11 operations that run whole on the libuv thread pool, one napi async work item each, so
 * that the event loop makes no PKCS#11 call on the request path (bench/README.md, "Off the event loop").
 *
 *   sign         C_SignInit + C_Sign                 (+ C_Sign into a scratch buffer when the output was too small)
 *   verify       C_VerifyInit + C_Verify
 *   findObjects  C_FindObjectsInit + C_FindObjects… + C_FindObjectsFinal
 *   getAttributeValue  C_GetAttributeValue (lengths) + C_GetAttributeValue (values)
 *   setAttributeValue  C_SetAttributeValue (a key's CKA_SIGN: lifecycle changes that stop or restore signing)
 *   openSession / closeSession
 *   probe        C_GetTokenInfo + C_OpenSession + C_GetSessionInfo + C_GenerateRandom + C_CloseSession (the
 *                random's CK_RV is reported, not thrown: the caller decides what it means)
 *   login        C_OpenSession + C_Login (CKR_USER_ALREADY_LOGGED_IN is a success) + C_GetSessionInfo; the session
 *                is kept (it holds the login) and closed again only when a call fails
 *   reinitialize C_Finalize + C_Initialize (OS locking, the module's initialization string) + C_GetSlotList +
 *                C_GetTokenInfo per slot: the slot of the token with the given label
 *
 * Besides, two synchronous calls that are no PKCS#11 at all: lockFile / unlockFile, an exclusive flock(2) on a file
 * (non-blocking: the caller polls). The registry takes it in SoftHSMv2's token directory so that processes sharing that
 * token change the registry one at a time (src/keys/host-lock.ts); the kernel releases it when its holder dies.
 *
 * It drives the module that the process already loaded and initialized through pkcs11js: bind(path) finds that copy
 * with dlopen(RTLD_NOLOAD) and takes its C_GetFunctionList. Only `reinitialize` calls C_Finalize and C_Initialize (the
 * caller makes sure no other job runs on the module meanwhile: the token drains its sessions first); handles are
 * pkcs11js's (Buffers of sizeof(CK_ULONG) bytes in native byte order; bigint and number are accepted too).
 *
 * A failed call rejects with an Error whose `code` is the CK_RV (a number), `method` the function's name, and whose
 * message is "C_SignInit: CKR_KEY_HANDLE_INVALID". Argument errors throw a TypeError at once.
 *
 * The PKCS#11 declarations are pkcs11js's own (node_modules/pkcs11js/includes): the binding whose handles these are.
 * Built by scripts/build-async-pkcs11.sh with the C compiler against Node's headers (Node-API only: one build serves
 * every Node version ≥ 18).
 */
#define NAPI_VERSION 8
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <node_api.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <pkcs11/pkcs11.h>

/* ---------------------------------------------------------------------------------------------------------------- */
/* CKR names                                                                                                        */

#define CKR_NAMES(X)                                                                                                   \
  X(CKR_OK) X(CKR_CANCEL) X(CKR_HOST_MEMORY) X(CKR_SLOT_ID_INVALID) X(CKR_GENERAL_ERROR) X(CKR_FUNCTION_FAILED)        \
  X(CKR_ARGUMENTS_BAD) X(CKR_NO_EVENT) X(CKR_NEED_TO_CREATE_THREADS) X(CKR_CANT_LOCK) X(CKR_ATTRIBUTE_READ_ONLY)       \
  X(CKR_ATTRIBUTE_SENSITIVE) X(CKR_ATTRIBUTE_TYPE_INVALID) X(CKR_ATTRIBUTE_VALUE_INVALID) X(CKR_ACTION_PROHIBITED)     \
  X(CKR_DATA_INVALID) X(CKR_DATA_LEN_RANGE) X(CKR_DEVICE_ERROR) X(CKR_DEVICE_MEMORY) X(CKR_DEVICE_REMOVED)             \
  X(CKR_ENCRYPTED_DATA_INVALID) X(CKR_ENCRYPTED_DATA_LEN_RANGE) X(CKR_FUNCTION_CANCELED) X(CKR_FUNCTION_NOT_PARALLEL) \
  X(CKR_FUNCTION_NOT_SUPPORTED) X(CKR_KEY_HANDLE_INVALID) X(CKR_KEY_SIZE_RANGE) X(CKR_KEY_TYPE_INCONSISTENT)           \
  X(CKR_KEY_NOT_NEEDED) X(CKR_KEY_CHANGED) X(CKR_KEY_NEEDED) X(CKR_KEY_INDIGESTIBLE) X(CKR_KEY_FUNCTION_NOT_PERMITTED) \
  X(CKR_KEY_NOT_WRAPPABLE) X(CKR_KEY_UNEXTRACTABLE) X(CKR_MECHANISM_INVALID) X(CKR_MECHANISM_PARAM_INVALID)            \
  X(CKR_OBJECT_HANDLE_INVALID) X(CKR_OPERATION_ACTIVE) X(CKR_OPERATION_NOT_INITIALIZED) X(CKR_PIN_INCORRECT)           \
  X(CKR_PIN_INVALID) X(CKR_PIN_LEN_RANGE) X(CKR_PIN_EXPIRED) X(CKR_PIN_LOCKED) X(CKR_SESSION_CLOSED)                   \
  X(CKR_SESSION_COUNT) X(CKR_SESSION_HANDLE_INVALID) X(CKR_SESSION_PARALLEL_NOT_SUPPORTED) X(CKR_SESSION_READ_ONLY)    \
  X(CKR_SESSION_EXISTS) X(CKR_SESSION_READ_ONLY_EXISTS) X(CKR_SESSION_READ_WRITE_SO_EXISTS) X(CKR_SIGNATURE_INVALID)   \
  X(CKR_SIGNATURE_LEN_RANGE) X(CKR_TEMPLATE_INCOMPLETE) X(CKR_TEMPLATE_INCONSISTENT) X(CKR_TOKEN_NOT_PRESENT)          \
  X(CKR_TOKEN_NOT_RECOGNIZED) X(CKR_TOKEN_WRITE_PROTECTED) X(CKR_UNWRAPPING_KEY_HANDLE_INVALID)                        \
  X(CKR_UNWRAPPING_KEY_SIZE_RANGE) X(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT) X(CKR_USER_ALREADY_LOGGED_IN)               \
  X(CKR_USER_NOT_LOGGED_IN) X(CKR_USER_PIN_NOT_INITIALIZED) X(CKR_USER_TYPE_INVALID)                                   \
  X(CKR_USER_ANOTHER_ALREADY_LOGGED_IN) X(CKR_USER_TOO_MANY_TYPES) X(CKR_WRAPPED_KEY_INVALID)                          \
  X(CKR_WRAPPED_KEY_LEN_RANGE) X(CKR_WRAPPING_KEY_HANDLE_INVALID) X(CKR_WRAPPING_KEY_SIZE_RANGE)                       \
  X(CKR_WRAPPING_KEY_TYPE_INCONSISTENT) X(CKR_RANDOM_SEED_NOT_SUPPORTED) X(CKR_RANDOM_NO_RNG)                          \
  X(CKR_DOMAIN_PARAMS_INVALID) X(CKR_CURVE_NOT_SUPPORTED) X(CKR_BUFFER_TOO_SMALL) X(CKR_SAVED_STATE_INVALID)           \
  X(CKR_INFORMATION_SENSITIVE) X(CKR_STATE_UNSAVEABLE) X(CKR_CRYPTOKI_NOT_INITIALIZED)                                 \
  X(CKR_CRYPTOKI_ALREADY_INITIALIZED) X(CKR_MUTEX_BAD) X(CKR_MUTEX_NOT_LOCKED) X(CKR_NEW_PIN_MODE) X(CKR_NEXT_OTP)     \
  X(CKR_EXCEEDED_MAX_ITERATIONS) X(CKR_FIPS_SELF_TEST_FAILED) X(CKR_LIBRARY_LOAD_FAILED) X(CKR_PIN_TOO_WEAK)           \
  X(CKR_PUBLIC_KEY_INVALID) X(CKR_FUNCTION_REJECTED)

/* The name of a return value, or "CKR_0x8000001f" for one the standard does not name (as the gateway's ckrName). */
static const char *ckr_name(CK_RV rv, char *scratch, size_t size) {
  switch (rv) {
#define CKR_CASE(name) \
  case name:           \
    return #name;
    CKR_NAMES(CKR_CASE)
#undef CKR_CASE
  default:
    snprintf(scratch, size, "CKR_0x%08lx", (unsigned long)rv);
    return scratch;
  }
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* Bound modules: one per loaded PKCS#11 library, process-wide (worker threads share them), never freed             */

typedef struct bound_module {
  void *dl; /* our own reference from dlopen: the library stays mapped while jobs may still call into it */
  CK_FUNCTION_LIST_PTR fl;
  struct bound_module *next;
} bound_module;

static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static bound_module *modules;

/* Tags the externals that carry a bound_module, so that no other external can be passed for one. */
static const napi_type_tag MODULE_TAG = {0x6873676174657761ULL, 0x796173796e633131ULL};

/* Per-environment data (the main thread and each worker thread that loads the addon). */
typedef struct {
  napi_ref error_class; /* set by setErrorClass: rejections are instances of it; else plain Errors */
} env_data;

static void env_data_free(napi_env env, void *data, void *hint) {
  env_data *d = data;
  if (d->error_class) napi_delete_reference(env, d->error_class);
  free(d);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* Argument helpers: each throws a TypeError and returns false on a bad argument                                    */

#define NAPI_OK(call)                                                                             \
  do {                                                                                            \
    if ((call) != napi_ok) {                                                                      \
      const napi_extended_error_info *info_ = NULL;                                               \
      napi_get_last_error_info(env, &info_);                                                      \
      bool pending_ = false;                                                                      \
      napi_is_exception_pending(env, &pending_);                                                  \
      if (!pending_)                                                                              \
        napi_throw_error(env, NULL, info_ && info_->error_message ? info_->error_message : #call); \
      return NULL;                                                                                \
    }                                                                                             \
  } while (0)

static bool type_error(napi_env env, const char *fmt, const char *what) {
  char msg[256];
  snprintf(msg, sizeof msg, fmt, what);
  napi_throw_type_error(env, NULL, msg);
  return false;
}

static napi_valuetype type_of(napi_env env, napi_value v) {
  napi_valuetype t = napi_undefined;
  napi_typeof(env, v, &t);
  return t;
}

static bool is_bytes(napi_env env, napi_value v) {
  bool b = false;
  return type_of(env, v) == napi_object && napi_is_buffer(env, v, &b) == napi_ok && b;
}

/* A non-negative integer that fits a CK_ULONG: a number (safe integer) or a bigint. */
static bool get_ulong(napi_env env, napi_value v, const char *what, CK_ULONG *out) {
  napi_valuetype t = type_of(env, v);
  if (t == napi_number) {
    double d = 0;
    napi_get_value_double(env, v, &d);
    if (!(d >= 0 && d <= 9007199254740991.0 && floor(d) == d) || d > (double)ULONG_MAX)
      return type_error(env, "%s must be a non-negative integer", what);
    *out = (CK_ULONG)d;
    return true;
  }
  if (t == napi_bigint) {
    uint64_t u = 0;
    bool lossless = false;
    napi_get_value_bigint_uint64(env, v, &u, &lossless);
    if (!lossless || u > ULONG_MAX) return type_error(env, "%s is out of range", what);
    *out = (CK_ULONG)u;
    return true;
  }
  return type_error(env, "%s must be a number", what);
}

/* A handle as pkcs11js gives it (a Buffer of sizeof(CK_ULONG) bytes), or a bigint / number. */
static bool get_handle(napi_env env, napi_value v, const char *what, CK_ULONG *out) {
  if (is_bytes(env, v)) {
    void *data = NULL;
    size_t len = 0;
    napi_get_buffer_info(env, v, &data, &len);
    if (len != sizeof(CK_ULONG)) {
      char msg[128];
      snprintf(msg, sizeof msg, "%s must be a handle: a Buffer of %zu bytes, a bigint or a number", what, sizeof(CK_ULONG));
      napi_throw_type_error(env, NULL, msg);
      return false;
    }
    memcpy(out, data, sizeof(CK_ULONG));
    return true;
  }
  napi_valuetype t = type_of(env, v);
  if (t == napi_number || t == napi_bigint) return get_ulong(env, v, what, out);
  return type_error(env, "%s must be a handle (Buffer, bigint or number)", what);
}

/* A copy of a Buffer / Uint8Array's bytes (the caller may reuse its buffer while the job runs). */
static bool get_bytes(napi_env env, napi_value v, const char *what, CK_BYTE_PTR *out, CK_ULONG *out_len) {
  if (!is_bytes(env, v)) return type_error(env, "%s must be a Buffer", what);
  void *data = NULL;
  size_t len = 0;
  napi_get_buffer_info(env, v, &data, &len);
  *out = malloc(len ? len : 1);
  if (!*out) return type_error(env, "%s: out of memory", what);
  if (len) memcpy(*out, data, len);
  *out_len = (CK_ULONG)len;
  return true;
}

static bool get_property(napi_env env, napi_value obj, const char *name, napi_value *out) {
  return napi_get_named_property(env, obj, name, out) == napi_ok;
}

static napi_value make_handle(napi_env env, CK_ULONG h) {
  napi_value b = NULL;
  napi_create_buffer_copy(env, sizeof h, &h, NULL, &b);
  return b;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* Jobs                                                                                                             */

typedef enum {
  OP_SIGN,
  OP_VERIFY,
  OP_FIND,
  OP_GET_ATTRIBUTES,
  OP_OPEN_SESSION,
  OP_CLOSE_SESSION,
  OP_PROBE,
  OP_LOGIN,
  OP_SET_ATTRIBUTES,
  OP_REINITIALIZE,
  OP_CREATE_OBJECT,
  OP_DESTROY_OBJECT
} op_kind;

static const char *const OP_NAMES[] = {"asyncPkcs11.sign",        "asyncPkcs11.verify",       "asyncPkcs11.findObjects",
                                       "asyncPkcs11.getAttributeValue", "asyncPkcs11.openSession",
                                       "asyncPkcs11.closeSession", "asyncPkcs11.probe",        "asyncPkcs11.login",
                                       "asyncPkcs11.setAttributeValue", "asyncPkcs11.reinitialize",
                                       "asyncPkcs11.createObject",      "asyncPkcs11.destroyObject"};

/* Most objects one findObjects may return when the caller sets no bound (a token's whole inventory). */
#define FIND_BATCH 1024
/* The most a signature may need: far above RSA-16384's 2,048 bytes; a bound for the scratch buffer too. */
#define MAX_SIGNATURE_BYTES (1UL << 16)

typedef struct {
  op_kind kind;
  CK_FUNCTION_LIST_PTR fl;
  napi_async_work work;
  napi_deferred deferred;

  /* the outcome */
  CK_RV rv;
  const char *failed; /* the function that answered rv */

  /* inputs */
  CK_SESSION_HANDLE session;
  CK_SLOT_ID slot;
  CK_FLAGS flags;
  CK_OBJECT_HANDLE object;
  CK_MECHANISM mechanism;
  CK_RSA_PKCS_PSS_PARAMS pss;
  CK_BYTE_PTR parameter; /* a Buffer parameter's copy */
  CK_BYTE_PTR data;
  CK_ULONG data_len;
  CK_BYTE_PTR signature; /* verify's input */
  CK_ULONG signature_len;
  CK_ATTRIBUTE_PTR attributes; /* findObjects', setAttributeValue's and createObject's template, getAttributeValue's types */
  CK_ULONG attribute_count;
  CK_ULONG at_most;
  char *init_args; /* reinitialize: C_Initialize's pReserved (NUL-terminated), or NULL */
  char *label;     /* reinitialize: the token label to find */

  /* outputs */
  CK_BYTE_PTR out; /* sign */
  CK_ULONG out_len;
  bool verified;
  CK_OBJECT_HANDLE_PTR found;
  CK_ULONG found_count;
  CK_SESSION_HANDLE opened;
  CK_TOKEN_INFO token_info;
  CK_SESSION_INFO session_info;
  CK_RV random_rv; /* probe: what C_GenerateRandom answered */
} job;

static void job_free(job *j) {
  if (!j) return;
  free(j->parameter);
  /* login's data is the PIN: no copy of it outlives the job */
  if (j->kind == OP_LOGIN && j->data) explicit_bzero(j->data, j->data_len);
  free(j->data);
  free(j->signature);
  if (j->attributes)
    for (CK_ULONG i = 0; i < j->attribute_count; i++) free(j->attributes[i].pValue);
  free(j->attributes);
  free(j->out);
  free(j->found);
  free(j->init_args);
  free(j->label);
  free(j);
}

#define FAIL(fn, rv_)    \
  do {                   \
    j->rv = (rv_);       \
    j->failed = #fn;     \
    return;              \
  } while (0)

static void run_sign(job *j) {
  CK_FUNCTION_LIST_PTR f = j->fl;
  /* No size given: a buffer big enough for any signature rather than a length query (one round trip fewer). */
  CK_ULONG cap = j->out_len ? j->out_len : MAX_SIGNATURE_BYTES;
  j->out = malloc(cap);
  if (!j->out) FAIL(C_SignInit, CKR_HOST_MEMORY); /* before any call: nothing to end */
  CK_RV rv = f->C_SignInit(j->session, &j->mechanism, j->object);
  if (rv != CKR_OK) FAIL(C_SignInit, rv);
  CK_ULONG len = cap;
  rv = f->C_Sign(j->session, j->data, j->data_len, j->out, &len);
  if (rv == CKR_BUFFER_TOO_SMALL) {
    /* The operation is still active (PKCS#11 v2.40 §5.2): finish it into a scratch buffer of the size the token
     * asked for, so that the session is clean for its next user, then report the error. */
    CK_ULONG need = len > cap && len <= MAX_SIGNATURE_BYTES ? len : MAX_SIGNATURE_BYTES;
    CK_BYTE_PTR scratch = malloc(need);
    if (scratch) {
      f->C_Sign(j->session, j->data, j->data_len, scratch, &need);
      free(scratch);
    }
    FAIL(C_Sign, CKR_BUFFER_TOO_SMALL);
  }
  if (rv != CKR_OK) FAIL(C_Sign, rv); /* any other answer has ended the operation */
  j->out_len = len;
}

static void run_verify(job *j) {
  CK_FUNCTION_LIST_PTR f = j->fl;
  CK_RV rv = f->C_VerifyInit(j->session, &j->mechanism, j->object);
  if (rv != CKR_OK) FAIL(C_VerifyInit, rv);
  rv = f->C_Verify(j->session, j->data, j->data_len, j->signature, j->signature_len);
  /* A wrong signature is an answer, not an error; either way the operation has ended. */
  if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE) {
    j->verified = false;
    return;
  }
  if (rv != CKR_OK) FAIL(C_Verify, rv);
  j->verified = true;
}

static void run_find(job *j) {
  CK_FUNCTION_LIST_PTR f = j->fl;
  CK_RV rv = f->C_FindObjectsInit(j->session, j->attributes, j->attribute_count);
  if (rv != CKR_OK) FAIL(C_FindObjectsInit, rv);
  CK_ULONG capacity = 0;
  CK_RV search = CKR_OK;
  while (j->found_count < j->at_most) {
    CK_ULONG want = j->at_most - j->found_count;
    if (want > FIND_BATCH) want = FIND_BATCH;
    if (capacity - j->found_count < want) {
      CK_ULONG grown = capacity ? capacity * 2 : want;
      while (grown - j->found_count < want) grown *= 2;
      CK_OBJECT_HANDLE_PTR p = realloc(j->found, grown * sizeof *p);
      if (!p) {
        search = CKR_HOST_MEMORY;
        break;
      }
      j->found = p;
      capacity = grown;
    }
    CK_ULONG got = 0;
    search = f->C_FindObjects(j->session, j->found + j->found_count, want, &got);
    if (search != CKR_OK || got == 0) break;
    j->found_count += got > want ? want : got;
  }
  /* Always finalized, so that the session can search again. */
  rv = f->C_FindObjectsFinal(j->session);
  if (search != CKR_OK) FAIL(C_FindObjects, search);
  if (rv != CKR_OK) FAIL(C_FindObjectsFinal, rv);
}

/* Sensitive or unknown attributes answer CK_UNAVAILABLE_INFORMATION for that attribute (undefined in JS); the other
 * attributes are still read. */
static bool attribute_rv_ok(CK_RV rv) {
  return rv == CKR_OK || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID;
}

static void run_get_attributes(job *j) {
  CK_FUNCTION_LIST_PTR f = j->fl;
  for (CK_ULONG i = 0; i < j->attribute_count; i++) {
    j->attributes[i].pValue = NULL;
    j->attributes[i].ulValueLen = 0;
  }
  CK_RV rv = f->C_GetAttributeValue(j->session, j->object, j->attributes, j->attribute_count);
  if (!attribute_rv_ok(rv)) FAIL(C_GetAttributeValue, rv);
  /* Second call with buffers, only for the attributes that have a value. */
  CK_ULONG n = 0;
  CK_ATTRIBUTE_PTR second = calloc(j->attribute_count ? j->attribute_count : 1, sizeof *second);
  CK_ULONG *index = calloc(j->attribute_count ? j->attribute_count : 1, sizeof *index);
  if (!second || !index) {
    free(second);
    free(index);
    FAIL(C_GetAttributeValue, CKR_HOST_MEMORY);
  }
  for (CK_ULONG i = 0; i < j->attribute_count; i++) {
    CK_ULONG len = j->attributes[i].ulValueLen;
    if (len == CK_UNAVAILABLE_INFORMATION) continue;
    j->attributes[i].pValue = malloc(len ? len : 1);
    if (!j->attributes[i].pValue) {
      rv = CKR_HOST_MEMORY;
      break;
    }
    second[n] = j->attributes[i];
    index[n++] = i;
  }
  if (rv == CKR_HOST_MEMORY) {
    free(second);
    free(index);
    FAIL(C_GetAttributeValue, rv);
  }
  rv = n ? f->C_GetAttributeValue(j->session, j->object, second, n) : CKR_OK;
  for (CK_ULONG k = 0; k < n; k++) j->attributes[index[k]].ulValueLen = second[k].ulValueLen;
  free(second);
  free(index);
  if (!attribute_rv_ok(rv)) FAIL(C_GetAttributeValue, rv);
}

static void run_probe(job *j) {
  CK_FUNCTION_LIST_PTR f = j->fl;
  CK_RV rv = f->C_GetTokenInfo(j->slot, &j->token_info);
  if (rv != CKR_OK) FAIL(C_GetTokenInfo, rv);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  rv = f->C_OpenSession(j->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
  if (rv != CKR_OK) FAIL(C_OpenSession, rv);
  CK_RV info = f->C_GetSessionInfo(s, &j->session_info);
  /* Whether the token computes: a library that keeps sessions and login itself (tpm2-pkcs11) answers all of the
   * above while its backend is gone; a few random bytes need the backend. */
  if (info == CKR_OK) {
    CK_BYTE random[8];
    /* A function list may leave out what a module does not offer. */
    j->random_rv = f->C_GenerateRandom ? f->C_GenerateRandom(s, random, sizeof random) : CKR_FUNCTION_NOT_SUPPORTED;
    explicit_bzero(random, sizeof random);
  }
  rv = f->C_CloseSession(s);
  if (info != CKR_OK) FAIL(C_GetSessionInfo, info);
  if (rv != CKR_OK) FAIL(C_CloseSession, rv);
}

static void run_login(job *j) {
  CK_FUNCTION_LIST_PTR f = j->fl;
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_RV rv = f->C_OpenSession(j->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
  if (rv != CKR_OK) FAIL(C_OpenSession, rv);
  /* The login belongs to the application, shared by all its sessions: "already logged in" means it is alive. */
  rv = f->C_Login(s, CKU_USER, j->data, j->data_len);
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    f->C_CloseSession(s);
    FAIL(C_Login, rv);
  }
  rv = f->C_GetSessionInfo(s, &j->session_info);
  if (rv != CKR_OK) {
    f->C_CloseSession(s);
    FAIL(C_GetSessionInfo, rv);
  }
  j->opened = s;
}

/* The label as the token reports it (32 bytes, blank- or NUL-padded) equals `want`. */
static bool label_is(const CK_UTF8CHAR *label, size_t size, const char *want) {
  size_t n = size;
  while (n > 0 && (label[n - 1] == ' ' || label[n - 1] == '\0')) n--;
  return strlen(want) == n && memcmp(label, want, n) == 0;
}

static void run_reinitialize(job *j) {
  CK_FUNCTION_LIST_PTR f = j->fl;
  /* Not initialized any more (a failed earlier attempt) is what C_Finalize is for: go on. */
  CK_RV rv = f->C_Finalize(NULL);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_NOT_INITIALIZED) FAIL(C_Finalize, rv);
  CK_C_INITIALIZE_ARGS args;
  memset(&args, 0, sizeof args);
  /* As pkcs11js is called at start-up (src/hsm/module.ts): without OS locking SoftHSMv2 corrupts its heap. */
  args.flags = CKF_OS_LOCKING_OK;
  args.pReserved = j->init_args;
  rv = f->C_Initialize(&args);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) FAIL(C_Initialize, rv);
  CK_ULONG n = 0;
  rv = f->C_GetSlotList(CK_TRUE, NULL, &n);
  if (rv != CKR_OK) FAIL(C_GetSlotList, rv);
  CK_SLOT_ID_PTR slots = calloc(n ? n : 1, sizeof *slots);
  if (!slots) FAIL(C_GetSlotList, CKR_HOST_MEMORY);
  rv = f->C_GetSlotList(CK_TRUE, slots, &n);
  if (rv != CKR_OK) {
    free(slots);
    FAIL(C_GetSlotList, rv);
  }
  for (CK_ULONG i = 0; i < n; i++) {
    if (f->C_GetTokenInfo(slots[i], &j->token_info) == CKR_OK && label_is(j->token_info.label, sizeof j->token_info.label, j->label)) {
      j->slot = slots[i];
      free(slots);
      return;
    }
  }
  free(slots);
  FAIL(C_GetTokenInfo, CKR_TOKEN_NOT_PRESENT);
}

static void execute(napi_env env, void *data) {
  job *j = data;
  CK_RV rv;
  switch (j->kind) {
  case OP_SIGN:
    run_sign(j);
    break;
  case OP_VERIFY:
    run_verify(j);
    break;
  case OP_FIND:
    run_find(j);
    break;
  case OP_GET_ATTRIBUTES:
    run_get_attributes(j);
    break;
  case OP_OPEN_SESSION:
    rv = j->fl->C_OpenSession(j->slot, j->flags | CKF_SERIAL_SESSION, NULL, NULL, &j->opened);
    if (rv != CKR_OK) {
      j->rv = rv;
      j->failed = "C_OpenSession";
    }
    break;
  case OP_CLOSE_SESSION:
    rv = j->fl->C_CloseSession(j->session);
    if (rv != CKR_OK) {
      j->rv = rv;
      j->failed = "C_CloseSession";
    }
    break;
  case OP_PROBE:
    run_probe(j);
    break;
  case OP_LOGIN:
    run_login(j);
    break;
  case OP_SET_ATTRIBUTES:
    rv = j->fl->C_SetAttributeValue(j->session, j->object, j->attributes, j->attribute_count);
    if (rv != CKR_OK) {
      j->rv = rv;
      j->failed = "C_SetAttributeValue";
    }
    break;
  case OP_REINITIALIZE:
    run_reinitialize(j);
    break;
  case OP_CREATE_OBJECT:
    rv = j->fl->C_CreateObject(j->session, j->attributes, j->attribute_count, &j->object);
    if (rv != CKR_OK) {
      j->rv = rv;
      j->failed = "C_CreateObject";
    }
    break;
  case OP_DESTROY_OBJECT:
    rv = j->fl->C_DestroyObject(j->session, j->object);
    if (rv != CKR_OK) {
      j->rv = rv;
      j->failed = "C_DestroyObject";
    }
    break;
  }
}

/* A rejection: an instance of the class given to setErrorClass(message, code, method), or an Error with them. */
static napi_value make_error(napi_env env, CK_RV rv, const char *method) {
  char scratch[32], message[160];
  snprintf(message, sizeof message, "%s: %s", method, ckr_name(rv, scratch, sizeof scratch));
  napi_value msg = NULL, code = NULL, fn = NULL, err = NULL;
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_double(env, (double)rv, &code);
  napi_create_string_utf8(env, method, NAPI_AUTO_LENGTH, &fn);
  env_data *d = NULL;
  napi_get_instance_data(env, (void **)&d);
  napi_value cls = NULL;
  if (d && d->error_class && napi_get_reference_value(env, d->error_class, &cls) == napi_ok && cls) {
    napi_value argv[3] = {msg, code, fn};
    if (napi_new_instance(env, cls, 3, argv, &err) == napi_ok) return err;
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value ignored;
      napi_get_and_clear_last_exception(env, &ignored);
    }
  }
  napi_create_error(env, NULL, msg, &err);
  napi_set_named_property(env, err, "code", code);
  napi_set_named_property(env, err, "method", fn);
  return err;
}

static napi_value trimmed_string(napi_env env, const CK_UTF8CHAR *s, size_t n) {
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\0')) n--;
  napi_value v = NULL;
  napi_create_string_utf8(env, (const char *)s, n, &v);
  return v;
}

static void set_number(napi_env env, napi_value obj, const char *name, double value) {
  napi_value v = NULL;
  napi_create_double(env, value, &v);
  napi_set_named_property(env, obj, name, v);
}

static void complete(napi_env env, napi_status status, void *data) {
  job *j = data;
  napi_value result = NULL;
  if (status != napi_ok) {
    /* Cancelled or the environment is going away: nothing ran (or its answer cannot be delivered). */
    j->rv = CKR_FUNCTION_CANCELED;
    j->failed = OP_NAMES[j->kind];
  }
  if (j->failed) {
    napi_reject_deferred(env, j->deferred, make_error(env, j->rv, j->failed));
  } else {
    switch (j->kind) {
    case OP_SIGN:
      napi_create_buffer_copy(env, j->out_len, j->out, NULL, &result);
      break;
    case OP_VERIFY:
      napi_get_boolean(env, j->verified, &result);
      break;
    case OP_FIND:
      napi_create_array_with_length(env, j->found_count, &result);
      for (CK_ULONG i = 0; i < j->found_count; i++) napi_set_element(env, result, (uint32_t)i, make_handle(env, j->found[i]));
      break;
    case OP_GET_ATTRIBUTES:
      napi_create_array_with_length(env, j->attribute_count, &result);
      for (CK_ULONG i = 0; i < j->attribute_count; i++) {
        napi_value v = NULL;
        CK_ATTRIBUTE *a = &j->attributes[i];
        if (a->ulValueLen == CK_UNAVAILABLE_INFORMATION || !a->pValue) napi_get_undefined(env, &v);
        else napi_create_buffer_copy(env, a->ulValueLen, a->pValue, NULL, &v);
        napi_set_element(env, result, (uint32_t)i, v);
      }
      break;
    case OP_OPEN_SESSION:
      result = make_handle(env, j->opened);
      break;
    case OP_CLOSE_SESSION:
    case OP_SET_ATTRIBUTES:
    case OP_DESTROY_OBJECT:
      napi_get_undefined(env, &result);
      break;
    case OP_CREATE_OBJECT:
      result = make_handle(env, j->object);
      break;
    case OP_PROBE: {
      napi_create_object(env, &result);
      set_number(env, result, "state", (double)j->session_info.state);
      set_number(env, result, "sessionFlags", (double)j->session_info.flags);
      set_number(env, result, "deviceError", (double)j->session_info.ulDeviceError);
      set_number(env, result, "tokenFlags", (double)j->token_info.flags);
      set_number(env, result, "randomRv", (double)j->random_rv);
      napi_set_named_property(env, result, "label", trimmed_string(env, j->token_info.label, sizeof j->token_info.label));
      break;
    }
    case OP_LOGIN:
      napi_create_object(env, &result);
      napi_set_named_property(env, result, "session", make_handle(env, j->opened));
      set_number(env, result, "state", (double)j->session_info.state);
      break;
    case OP_REINITIALIZE:
      result = make_handle(env, j->slot);
      break;
    }
    napi_resolve_deferred(env, j->deferred, result);
  }
  napi_delete_async_work(env, j->work);
  job_free(j);
}

/* Queues a job; returns its promise (or NULL with an exception pending, the job freed). */
static napi_value queue(napi_env env, job *j) {
  napi_value promise = NULL, name = NULL;
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, OP_NAMES[j->kind], NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, execute, complete, j, &j->work) != napi_ok) {
    job_free(j);
    napi_throw_error(env, NULL, "async PKCS#11: could not create the work item");
    return NULL;
  }
  if (napi_queue_async_work(env, j->work) != napi_ok) {
    /* The promise would never settle: reject it now. */
    napi_reject_deferred(env, j->deferred, make_error(env, CKR_GENERAL_ERROR, OP_NAMES[j->kind]));
    napi_delete_async_work(env, j->work);
    job_free(j);
  }
  return promise;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* Argument parsing shared by the operations                                                                        */

static job *new_job(napi_env env, op_kind kind, napi_value module) {
  bool tagged = false;
  void *p = NULL;
  if (type_of(env, module) != napi_external || napi_check_object_type_tag(env, module, &MODULE_TAG, &tagged) != napi_ok ||
      !tagged || napi_get_value_external(env, module, &p) != napi_ok || !p) {
    type_error(env, "%s", "the first argument must be a module from bind()");
    return NULL;
  }
  job *j = calloc(1, sizeof *j);
  if (!j) {
    napi_throw_error(env, NULL, "async PKCS#11: out of memory");
    return NULL;
  }
  j->kind = kind;
  j->fl = ((bound_module *)p)->fl;
  return j;
}

/* { mechanism: number, parameter?: Buffer | { hashAlg, mgf, saltLen } (pkcs11js's RsaPSS) } or a bare number. */
static bool get_mechanism(napi_env env, napi_value v, job *j) {
  napi_valuetype t = type_of(env, v);
  if (t == napi_number || t == napi_bigint) return get_ulong(env, v, "mechanism", &j->mechanism.mechanism);
  if (t != napi_object) return type_error(env, "%s must be { mechanism, parameter? } or a number", "mechanism");
  napi_value m = NULL, param = NULL;
  if (!get_property(env, v, "mechanism", &m) || !get_ulong(env, m, "mechanism.mechanism", &j->mechanism.mechanism)) return false;
  if (!get_property(env, v, "parameter", &param)) return false;
  napi_valuetype pt = type_of(env, param);
  if (pt == napi_undefined || pt == napi_null) return true;
  if (is_bytes(env, param)) {
    CK_ULONG len = 0;
    if (!get_bytes(env, param, "mechanism.parameter", &j->parameter, &len)) return false;
    j->mechanism.pParameter = j->parameter;
    j->mechanism.ulParameterLen = len;
    return true;
  }
  if (pt != napi_object) return type_error(env, "%s must be a Buffer or RSA-PSS parameters", "mechanism.parameter");
  napi_value type = NULL, hash = NULL, mgf = NULL, salt = NULL;
  /* pkcs11js tags its parameter objects with `type` (CK_PARAMS_RSA_PSS = 5); only PSS is taken here. */
  if (get_property(env, param, "type", &type) && type_of(env, type) != napi_undefined) {
    CK_ULONG kind = 0;
    if (!get_ulong(env, type, "mechanism.parameter.type", &kind)) return false;
    if (kind != 5) return type_error(env, "%s: only RSA-PSS parameters (type 5) or a Buffer are supported", "mechanism.parameter");
  }
  if (!get_property(env, param, "hashAlg", &hash) || !get_ulong(env, hash, "mechanism.parameter.hashAlg", &j->pss.hashAlg)) return false;
  if (!get_property(env, param, "mgf", &mgf) || !get_ulong(env, mgf, "mechanism.parameter.mgf", &j->pss.mgf)) return false;
  if (!get_property(env, param, "saltLen", &salt) || !get_ulong(env, salt, "mechanism.parameter.saltLen", &j->pss.sLen)) return false;
  j->mechanism.pParameter = &j->pss;
  j->mechanism.ulParameterLen = sizeof j->pss;
  return true;
}

/* [{ type, value }]: value a number (CK_ULONG), a boolean (CK_BBOOL), a string (UTF-8), a Buffer, or absent. */
static bool get_template(napi_env env, napi_value v, job *j) {
  bool is_array = false;
  if (napi_is_array(env, v, &is_array) != napi_ok || !is_array) return type_error(env, "%s must be an array", "template");
  uint32_t n = 0;
  napi_get_array_length(env, v, &n);
  j->attributes = calloc(n ? n : 1, sizeof *j->attributes);
  if (!j->attributes) return type_error(env, "%s: out of memory", "template");
  j->attribute_count = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value item = NULL, type = NULL, value = NULL;
    CK_ATTRIBUTE *a = &j->attributes[i];
    napi_get_element(env, v, i, &item);
    if (type_of(env, item) != napi_object) return type_error(env, "%s entries must be { type, value }", "template");
    if (!get_property(env, item, "type", &type) || !get_ulong(env, type, "template[].type", &a->type)) return false;
    if (!get_property(env, item, "value", &value)) return false;
    napi_valuetype vt = type_of(env, value);
    if (vt == napi_number || vt == napi_bigint) {
      CK_ULONG u = 0;
      if (!get_ulong(env, value, "template[].value", &u)) return false;
      if (!(a->pValue = malloc(sizeof u))) return type_error(env, "%s: out of memory", "template");
      memcpy(a->pValue, &u, sizeof u);
      a->ulValueLen = sizeof u;
    } else if (vt == napi_boolean) {
      bool b = false;
      napi_get_value_bool(env, value, &b);
      CK_BBOOL bb = b ? CK_TRUE : CK_FALSE;
      if (!(a->pValue = malloc(1))) return type_error(env, "%s: out of memory", "template");
      memcpy(a->pValue, &bb, 1);
      a->ulValueLen = 1;
    } else if (vt == napi_string) {
      size_t len = 0;
      napi_get_value_string_utf8(env, value, NULL, 0, &len);
      if (!(a->pValue = malloc(len + 1))) return type_error(env, "%s: out of memory", "template");
      napi_get_value_string_utf8(env, value, a->pValue, len + 1, &len);
      a->ulValueLen = len;
    } else if (is_bytes(env, value)) {
      CK_BYTE_PTR bytes = NULL;
      CK_ULONG len = 0;
      if (!get_bytes(env, value, "template[].value", &bytes, &len)) return false;
      a->pValue = bytes;
      a->ulValueLen = len;
    } else if (vt != napi_undefined && vt != napi_null) {
      return type_error(env, "%s must be a number, boolean, string or Buffer", "template[].value");
    }
  }
  return true;
}

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return false;
  for (size_t i = argc; i < want; i++) napi_get_undefined(env, &argv[i]);
  return true;
}

/* Frees the job and returns NULL when parsing failed (the TypeError is pending). */
#define PARSE(ok)        \
  do {                   \
    if (!(ok)) {         \
      job_free(j);       \
      return NULL;       \
    }                    \
  } while (0)

/* ---------------------------------------------------------------------------------------------------------------- */
/* Exports                                                                                                          */

/* bind(path) → module: the copy of the library this process already loaded (pkcs11js's p11.load), by dlopen with
 * RTLD_NOLOAD; the same library under another path name is the same copy. Binding twice gives the same module. */
static napi_value Bind(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  if (type_of(env, argv[0]) != napi_string) {
    type_error(env, "%s must be a string", "path");
    return NULL;
  }
  char path[PATH_MAX];
  size_t len = 0;
  napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len);
  if (len >= sizeof path - 1) {
    type_error(env, "%s is too long", "path");
    return NULL;
  }
  void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (!dl) {
    char msg[PATH_MAX + 160];
    snprintf(msg, sizeof msg, "async PKCS#11: %s is not loaded in this process (load and initialize it with pkcs11js first)", path);
    napi_throw_error(env, NULL, msg);
    return NULL;
  }
  pthread_mutex_lock(&modules_lock);
  bound_module *m = modules;
  while (m && m->dl != dl) m = m->next;
  if (m) {
    dlclose(dl); /* keep one reference per module */
  } else {
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR fl = NULL;
    CK_RV rv = get ? get(&fl) : CKR_FUNCTION_NOT_SUPPORTED;
    if (rv != CKR_OK || !fl || !(m = calloc(1, sizeof *m))) {
      pthread_mutex_unlock(&modules_lock);
      dlclose(dl);
      char scratch[32], msg[PATH_MAX + 160];
      snprintf(msg, sizeof msg, "async PKCS#11: C_GetFunctionList of %s: %s", path,
               get ? ckr_name(rv == CKR_OK ? CKR_HOST_MEMORY : rv, scratch, sizeof scratch) : "no such symbol");
      napi_throw_error(env, NULL, msg);
      return NULL;
    }
    m->dl = dl;
    m->fl = fl;
    m->next = modules;
    modules = m;
  }
  pthread_mutex_unlock(&modules_lock);
  napi_value external = NULL;
  NAPI_OK(napi_create_external(env, m, NULL, NULL, &external));
  NAPI_OK(napi_type_tag_object(env, external, &MODULE_TAG));
  return external;
}

/* setErrorClass(cls): rejections become `new cls(message, code, method)` in this environment. */
static napi_value SetErrorClass(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  if (type_of(env, argv[0]) != napi_function) {
    type_error(env, "%s must be a class", "errorClass");
    return NULL;
  }
  env_data *d = NULL;
  napi_get_instance_data(env, (void **)&d);
  if (!d) return NULL;
  if (d->error_class) napi_delete_reference(env, d->error_class);
  d->error_class = NULL;
  NAPI_OK(napi_create_reference(env, argv[0], 1, &d->error_class));
  return NULL;
}

/* sign(module, session, mechanism, key, data, maxSignatureBytes?) → Promise<Buffer> */
static napi_value Sign(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!get_args(env, info, 6, argv)) return NULL;
  job *j = new_job(env, OP_SIGN, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "session", &j->session));
  PARSE(get_mechanism(env, argv[2], j));
  PARSE(get_handle(env, argv[3], "key", &j->object));
  PARSE(get_bytes(env, argv[4], "data", &j->data, &j->data_len));
  napi_valuetype t = type_of(env, argv[5]);
  if (t != napi_undefined && t != napi_null) {
    PARSE(get_ulong(env, argv[5], "maxSignatureBytes", &j->out_len));
    if (j->out_len == 0 || j->out_len > MAX_SIGNATURE_BYTES) PARSE(type_error(env, "%s must be 1…65536", "maxSignatureBytes"));
  }
  return queue(env, j);
}

/* verify(module, session, mechanism, key, data, signature) → Promise<boolean> (false: CKR_SIGNATURE_INVALID or
 * CKR_SIGNATURE_LEN_RANGE) */
static napi_value Verify(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!get_args(env, info, 6, argv)) return NULL;
  job *j = new_job(env, OP_VERIFY, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "session", &j->session));
  PARSE(get_mechanism(env, argv[2], j));
  PARSE(get_handle(env, argv[3], "key", &j->object));
  PARSE(get_bytes(env, argv[4], "data", &j->data, &j->data_len));
  PARSE(get_bytes(env, argv[5], "signature", &j->signature, &j->signature_len));
  return queue(env, j);
}

/* findObjects(module, session, template, atMost?) → Promise<Buffer[]> */
static napi_value FindObjects(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;
  job *j = new_job(env, OP_FIND, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "session", &j->session));
  PARSE(get_template(env, argv[2], j));
  j->at_most = ULONG_MAX;
  napi_valuetype t = type_of(env, argv[3]);
  if (t == napi_number) {
    double d = 0;
    napi_get_value_double(env, argv[3], &d);
    if (isinf(d) && d > 0) t = napi_undefined; /* Infinity: no bound */
  }
  if (t != napi_undefined && t != napi_null) {
    PARSE(get_ulong(env, argv[3], "atMost", &j->at_most));
    if (j->at_most == 0) PARSE(type_error(env, "%s must be at least 1", "atMost"));
  }
  return queue(env, j);
}

/* getAttributeValue(module, session, object, types) → Promise<(Buffer | undefined)[]> */
static napi_value GetAttributeValue(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;
  job *j = new_job(env, OP_GET_ATTRIBUTES, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "session", &j->session));
  PARSE(get_handle(env, argv[2], "object", &j->object));
  bool is_array = false;
  napi_is_array(env, argv[3], &is_array);
  PARSE(is_array || type_error(env, "%s must be an array of attribute types", "types"));
  uint32_t n = 0;
  napi_get_array_length(env, argv[3], &n);
  j->attributes = calloc(n ? n : 1, sizeof *j->attributes);
  PARSE(j->attributes != NULL || type_error(env, "%s: out of memory", "types"));
  j->attribute_count = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value type = NULL;
    napi_get_element(env, argv[3], i, &type);
    PARSE(get_ulong(env, type, "types[]", &j->attributes[i].type));
  }
  return queue(env, j);
}

/* setAttributeValue(module, session, object, template) → Promise<void>; the template as findObjects takes it. */
static napi_value SetAttributeValue(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;
  job *j = new_job(env, OP_SET_ATTRIBUTES, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "session", &j->session));
  PARSE(get_handle(env, argv[2], "object", &j->object));
  PARSE(get_template(env, argv[3], j));
  return queue(env, j);
}

/* createObject(module, session, template) → Promise<Buffer>: the new object's handle; the template as findObjects
 * takes it. */
static napi_value CreateObject(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  job *j = new_job(env, OP_CREATE_OBJECT, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "session", &j->session));
  PARSE(get_template(env, argv[2], j));
  return queue(env, j);
}

/* destroyObject(module, session, object) → Promise<void> */
static napi_value DestroyObject(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  job *j = new_job(env, OP_DESTROY_OBJECT, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "session", &j->session));
  PARSE(get_handle(env, argv[2], "object", &j->object));
  return queue(env, j);
}

/* openSession(module, slot, flags) → Promise<Buffer>; CKF_SERIAL_SESSION is always added. */
static napi_value OpenSession(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  job *j = new_job(env, OP_OPEN_SESSION, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "slot", &j->slot));
  if (type_of(env, argv[2]) != napi_undefined) PARSE(get_ulong(env, argv[2], "flags", &j->flags));
  return queue(env, j);
}

/* closeSession(module, session) → Promise<void> */
static napi_value CloseSession(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  job *j = new_job(env, OP_CLOSE_SESSION, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "session", &j->session));
  return queue(env, j);
}

/* probe(module, slot) → Promise<{ state, sessionFlags, deviceError, tokenFlags, randomRv, label }> */
static napi_value Probe(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  job *j = new_job(env, OP_PROBE, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "slot", &j->slot));
  return queue(env, j);
}

/* login(module, slot, pin) → Promise<{ session, state }>: a fresh session logged in as the user (CKU_USER). */
static napi_value Login(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  job *j = new_job(env, OP_LOGIN, argv[0]);
  if (!j) return NULL;
  PARSE(get_handle(env, argv[1], "slot", &j->slot));
  PARSE(type_of(env, argv[2]) == napi_string || type_error(env, "%s must be a string", "pin"));
  size_t len = 0;
  napi_get_value_string_utf8(env, argv[2], NULL, 0, &len);
  j->data = malloc(len + 1);
  PARSE(j->data != NULL || type_error(env, "%s: out of memory", "pin"));
  napi_get_value_string_utf8(env, argv[2], (char *)j->data, len + 1, &len);
  j->data_len = (CK_ULONG)len;
  return queue(env, j);
}

/* A string argument's copy (NUL-terminated), or NULL for undefined / null. */
static bool get_string(napi_env env, napi_value v, const char *what, bool optional, char **out) {
  napi_valuetype t = type_of(env, v);
  if (optional && (t == napi_undefined || t == napi_null)) return true;
  if (t != napi_string) return type_error(env, "%s must be a string", what);
  size_t len = 0;
  napi_get_value_string_utf8(env, v, NULL, 0, &len);
  if (!(*out = malloc(len + 1))) return type_error(env, "%s: out of memory", what);
  napi_get_value_string_utf8(env, v, *out, len + 1, &len);
  return true;
}

/* reinitialize(module, tokenLabel, initArgs?) → Promise<Buffer>: C_Finalize + C_Initialize, then the slot whose token
 * has this label. Every session and handle of the module is gone afterwards: run it only with none in use. */
static napi_value Reinitialize(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  job *j = new_job(env, OP_REINITIALIZE, argv[0]);
  if (!j) return NULL;
  PARSE(get_string(env, argv[1], "tokenLabel", false, &j->label));
  PARSE(get_string(env, argv[2], "initArgs", true, &j->init_args));
  return queue(env, j);
}

/* lockFile(path) → the open descriptor holding an exclusive flock on path (created 0600 when missing), or null
 * while another open file description holds it. Never blocks. Throws an Error saying why (strerror) otherwise. */
static napi_value LockFile(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  char *path = NULL;
  if (!get_string(env, argv[0], "path", false, &path)) return NULL;
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  int err = fd < 0 ? errno : 0;
  if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) != 0) {
    err = errno;
    close(fd);
    fd = -1;
  }
  free(path);
  napi_value result = NULL;
  if (fd >= 0) {
    NAPI_OK(napi_create_int32(env, fd, &result));
    return result;
  }
  if (err == EWOULDBLOCK || err == EINTR) {
    NAPI_OK(napi_get_null(env, &result));
    return result;
  }
  char msg[160];
  snprintf(msg, sizeof msg, "lockFile: %s", strerror(err));
  napi_throw_error(env, NULL, msg);
  return NULL;
}

/* unlockFile(fd): releases what lockFile took (closing the descriptor releases the flock). */
static napi_value UnlockFile(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int32_t fd = -1;
  if (type_of(env, argv[0]) != napi_number || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    type_error(env, "%s must be a descriptor lockFile returned", "fd");
    return NULL;
  }
  close(fd);
  return NULL;
}

NAPI_MODULE_INIT() {
  env_data *d = calloc(1, sizeof *d);
  if (!d || napi_set_instance_data(env, d, env_data_free, NULL) != napi_ok) {
    free(d);
    napi_throw_error(env, NULL, "async PKCS#11: out of memory");
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"bind", NULL, Bind, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setErrorClass", NULL, SetErrorClass, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sign", NULL, Sign, NULL, NULL, NULL, napi_enumerable, NULL},
      {"verify", NULL, Verify, NULL, NULL, NULL, napi_enumerable, NULL},
      {"findObjects", NULL, FindObjects, NULL, NULL, NULL, napi_enumerable, NULL},
      {"getAttributeValue", NULL, GetAttributeValue, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setAttributeValue", NULL, SetAttributeValue, NULL, NULL, NULL, napi_enumerable, NULL},
      {"openSession", NULL, OpenSession, NULL, NULL, NULL, napi_enumerable, NULL},
      {"closeSession", NULL, CloseSession, NULL, NULL, NULL, napi_enumerable, NULL},
      {"probe", NULL, Probe, NULL, NULL, NULL, napi_enumerable, NULL},
      {"login", NULL, Login, NULL, NULL, NULL, napi_enumerable, NULL},
      {"reinitialize", NULL, Reinitialize, NULL, NULL, NULL, napi_enumerable, NULL},
      {"createObject", NULL, CreateObject, NULL, NULL, NULL, napi_enumerable, NULL},
      {"destroyObject", NULL, DestroyObject, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lockFile", NULL, LockFile, NULL, NULL, NULL, napi_enumerable, NULL},
      {"unlockFile", NULL, UnlockFile, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  NAPI_OK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  napi_value size = NULL;
  napi_create_uint32(env, (uint32_t)sizeof(CK_ULONG), &size);
  napi_set_named_property(env, exports, "handleBytes", size);
  return exports;
}
