/*
 * token.c: the PKCS#11 v2.40 entry points of the SM2 test token (one slot, id 0, one token).
 *
 * Locking: one module mutex (g_lock) guards all state and is taken by every entry point. C_Sign and C_Verify copy
 * the key out under the lock, end the operation, and do the elliptic-curve work without it, so the signatures of
 * different sessions (pkcs11js runs C_SignAsync on libuv worker threads) are computed in parallel.
 *
 * Login state is per token (all sessions of the process), as the standard says; closing the last session logs
 * out. Objects are visible to every session; private objects only while the user is logged in.
 */
#define _DEFAULT_SOURCE
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SM2TOKEN_EXPORT __attribute__((visibility("default")))
#include "sm2-vendor.h"
#include "sm2.h"
#include "sm2token.h"

#define SLOT_ID 0UL
#define MIN_PIN 4UL
#define MAX_PIN 255UL

enum login { LOGGED_OUT, LOGGED_IN_USER, LOGGED_IN_SO };
enum op { OP_NONE, OP_ACTIVE };

struct session {
  struct session *next;
  CK_SESSION_HANDLE handle;
  CK_FLAGS flags;
  /* C_SignInit / C_VerifyInit copy the key here; the operation ends by wiping it. */
  enum op sign, verify;
  CK_MECHANISM_TYPE sign_mech, verify_mech;
  unsigned char sign_key[SM2_SCALAR_LEN], verify_key[SM2_POINT_LEN];
  /* C_FindObjectsInit takes a snapshot of the matching handles. */
  enum op find;
  CK_OBJECT_HANDLE *found;
  size_t found_count, found_next;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_initialized;
static struct token_meta g_token;
static struct object *g_objects;
static struct session *g_sessions;
static enum login g_login;
/* Never reset, so a handle from before a C_Finalize is not valid after the next C_Initialize. */
static CK_OBJECT_HANDLE g_next_object = 1;
static CK_SESSION_HANDLE g_next_session = 1;

static const CK_MECHANISM_TYPE g_mechanisms[] = {CKM_VENDOR_SM2_KEY_PAIR_GEN, CKM_VENDOR_SM2_SIGN_E,
                                                 CKM_VENDOR_SM2_SIGN_E_DER};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- Locking ---- */

static CK_RV enter(void) {
  pthread_mutex_lock(&g_lock);
  if (g_initialized) return CKR_OK;
  pthread_mutex_unlock(&g_lock);
  return CKR_CRYPTOKI_NOT_INITIALIZED;
}

static CK_RV leave(CK_RV rv) {
  pthread_mutex_unlock(&g_lock);
  return rv;
}

/* ---- Small helpers ---- */

static void pad(CK_UTF8CHAR *field, size_t size, const char *text) {
  size_t n = strlen(text);
  memset(field, ' ', size);
  memcpy(field, text, n < size ? n : size);
}

static struct session *find_session(CK_SESSION_HANDLE h) {
  for (struct session *s = g_sessions; s; s = s->next)
    if (s->handle == h) return s;
  return NULL;
}

static CK_ULONG count_sessions(int rw_only) {
  CK_ULONG n = 0;
  for (struct session *s = g_sessions; s; s = s->next)
    if (!rw_only || (s->flags & CKF_RW_SESSION)) n++;
  return n;
}

static CK_BBOOL obj_bool(const struct object *o, CK_ATTRIBUTE_TYPE type, CK_BBOOL dflt) {
  const struct attr *a = obj_attr(o, type);
  return a && a->len == sizeof(CK_BBOOL) ? *a->value != CK_FALSE : dflt;
}

static CK_ULONG obj_ulong(const struct object *o, CK_ATTRIBUTE_TYPE type, CK_ULONG dflt) {
  const struct attr *a = obj_attr(o, type);
  CK_ULONG v = dflt;
  if (a && a->len == sizeof v) memcpy(&v, a->value, sizeof v);
  return v;
}

static int set_bool(struct object *o, CK_ATTRIBUTE_TYPE type, CK_BBOOL v) { return obj_set(o, type, &v, sizeof v); }
static int set_ulong(struct object *o, CK_ATTRIBUTE_TYPE type, CK_ULONG v) { return obj_set(o, type, &v, sizeof v); }
/* Sets a default: only when the template did not give the attribute. */
static int dflt_bool(struct object *o, CK_ATTRIBUTE_TYPE type, CK_BBOOL v) {
  return obj_attr(o, type) ? 1 : set_bool(o, type, v);
}
static int dflt_empty(struct object *o, CK_ATTRIBUTE_TYPE type) { return obj_attr(o, type) ? 1 : obj_set(o, type, NULL, 0); }

static int is_visible(const struct object *o) {
  return !obj_bool(o, CKA_PRIVATE, CK_TRUE) || g_login == LOGGED_IN_USER;
}

static struct object *find_object(CK_OBJECT_HANDLE h, int *hidden) {
  if (hidden) *hidden = 0;
  for (struct object *o = g_objects; o; o = o->next) {
    if (o->handle != h) continue;
    if (is_visible(o)) return o;
    if (hidden) *hidden = 1;
    return NULL;
  }
  return NULL;
}

static void add_object(struct object *o, CK_SESSION_HANDLE owner) {
  o->handle = g_next_object++;
  o->session = owner;
  o->next = g_objects;
  g_objects = o;
}

static void unlink_object(struct object *victim) {
  for (struct object **p = &g_objects; *p; p = &(*p)->next)
    if (*p == victim) {
      *p = victim->next;
      return;
    }
}

/* ---- Which attributes an object of a class has (everything else is CKR_ATTRIBUTE_TYPE_INVALID) ---- */

static const CK_ATTRIBUTE_TYPE common_attrs[] = {CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL,
                                                 CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE};
static const CK_ATTRIBUTE_TYPE data_attrs[] = {CKA_APPLICATION, CKA_OBJECT_ID, CKA_VALUE};
static const CK_ATTRIBUTE_TYPE cert_attrs[] = {
    CKA_CERTIFICATE_TYPE, CKA_TRUSTED, CKA_CERTIFICATE_CATEGORY, CKA_CHECK_VALUE, CKA_START_DATE,
    CKA_END_DATE, CKA_PUBLIC_KEY_INFO, CKA_SUBJECT, CKA_ID, CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_VALUE,
    CKA_URL, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, CKA_HASH_OF_ISSUER_PUBLIC_KEY, CKA_JAVA_MIDP_SECURITY_DOMAIN,
    CKA_NAME_HASH_ALGORITHM};
static const CK_ATTRIBUTE_TYPE key_attrs[] = {CKA_KEY_TYPE, CKA_ID, CKA_START_DATE, CKA_END_DATE,
                                              CKA_DERIVE, CKA_LOCAL, CKA_KEY_GEN_MECHANISM, CKA_SUBJECT,
                                              CKA_PUBLIC_KEY_INFO, CKA_EC_PARAMS};
static const CK_ATTRIBUTE_TYPE public_attrs[] = {CKA_ENCRYPT, CKA_VERIFY, CKA_VERIFY_RECOVER,
                                                 CKA_WRAP, CKA_TRUSTED, CKA_EC_POINT};
static const CK_ATTRIBUTE_TYPE private_attrs[] = {
    CKA_SENSITIVE, CKA_DECRYPT, CKA_SIGN, CKA_SIGN_RECOVER, CKA_UNWRAP, CKA_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED, CKA_ALWAYS_AUTHENTICATE, CKA_VALUE};
static const CK_ATTRIBUTE_TYPE bool_attrs[] = {
    CKA_TOKEN, CKA_PRIVATE, CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE, CKA_TRUSTED, CKA_DERIVE, CKA_LOCAL,
    CKA_ENCRYPT, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_WRAP, CKA_SENSITIVE, CKA_DECRYPT, CKA_SIGN,
    CKA_SIGN_RECOVER, CKA_UNWRAP, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE,
    CKA_WRAP_WITH_TRUSTED, CKA_ALWAYS_AUTHENTICATE};
static const CK_ATTRIBUTE_TYPE ulong_attrs[] = {CKA_CLASS, CKA_CERTIFICATE_TYPE, CKA_CERTIFICATE_CATEGORY,
                                                CKA_KEY_TYPE, CKA_KEY_GEN_MECHANISM,
                                                CKA_JAVA_MIDP_SECURITY_DOMAIN, CKA_NAME_HASH_ALGORITHM};
/* Set by the token only: never in a key-generation template, */
static const CK_ATTRIBUTE_TYPE generated_attrs[] = {CKA_LOCAL, CKA_KEY_GEN_MECHANISM, CKA_ALWAYS_SENSITIVE,
                                                    CKA_NEVER_EXTRACTABLE, CKA_EC_POINT, CKA_VALUE,
                                                    CKA_PUBLIC_KEY_INFO};
/* nor in the template of an imported public key. */
static const CK_ATTRIBUTE_TYPE imported_attrs[] = {CKA_LOCAL, CKA_KEY_GEN_MECHANISM, CKA_PUBLIC_KEY_INFO};

static int in(const CK_ATTRIBUTE_TYPE *list, size_t n, CK_ATTRIBUTE_TYPE t) {
  for (size_t i = 0; i < n; i++)
    if (list[i] == t) return 1;
  return 0;
}

static int valid_for(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE t) {
  if (in(common_attrs, COUNT(common_attrs), t)) return 1;
  switch (cls) {
  case CKO_DATA: return in(data_attrs, COUNT(data_attrs), t);
  case CKO_CERTIFICATE: return in(cert_attrs, COUNT(cert_attrs), t);
  case CKO_PUBLIC_KEY: return in(key_attrs, COUNT(key_attrs), t) || in(public_attrs, COUNT(public_attrs), t);
  case CKO_PRIVATE_KEY: return in(key_attrs, COUNT(key_attrs), t) || in(private_attrs, COUNT(private_attrs), t);
  default: return 0;
  }
}

/* The secret value of a private key: never readable, never matched by a search. */
static int is_secret(const struct object *o, CK_ATTRIBUTE_TYPE t) {
  return t == CKA_VALUE && obj_ulong(o, CKA_CLASS, CKO_DATA) == CKO_PRIVATE_KEY;
}

/* Checks one template attribute's shape (pointer, length of booleans and CK_ULONGs). */
static CK_RV check_attribute(const CK_ATTRIBUTE *a) {
  if (!a->pValue && a->ulValueLen) return CKR_ATTRIBUTE_VALUE_INVALID;
  if (in(bool_attrs, COUNT(bool_attrs), a->type) && a->ulValueLen != sizeof(CK_BBOOL)) return CKR_ATTRIBUTE_VALUE_INVALID;
  if (in(ulong_attrs, COUNT(ulong_attrs), a->type) && a->ulValueLen != sizeof(CK_ULONG)) return CKR_ATTRIBUTE_VALUE_INVALID;
  return CKR_OK;
}

/* A new object of class cls from a creation template; `readonly` lists attributes the template may not set. */
static CK_RV object_from_template(CK_OBJECT_CLASS cls, const CK_ATTRIBUTE *t, CK_ULONG n,
                                  const CK_ATTRIBUTE_TYPE *readonly, size_t readonly_count, struct object **out) {
  *out = NULL;
  if (!t && n) return CKR_ARGUMENTS_BAD;
  struct object *o = calloc(1, sizeof *o);
  if (!o) return CKR_HOST_MEMORY;
  CK_RV rv = CKR_OK;
  for (CK_ULONG i = 0; i < n && rv == CKR_OK; i++) {
    const CK_ATTRIBUTE *a = &t[i];
    if ((rv = check_attribute(a)) != CKR_OK) break;
    if (!valid_for(cls, a->type)) rv = CKR_ATTRIBUTE_TYPE_INVALID;
    else if (in(readonly, readonly_count, a->type)) rv = CKR_ATTRIBUTE_READ_ONLY;
    else if (obj_attr(o, a->type)) rv = CKR_TEMPLATE_INCONSISTENT; /* given twice */
    else if (!obj_set(o, a->type, a->pValue, a->ulValueLen)) rv = CKR_HOST_MEMORY;
  }
  if (rv == CKR_OK && obj_ulong(o, CKA_CLASS, cls) != cls) rv = CKR_TEMPLATE_INCONSISTENT;
  if (rv == CKR_OK && !set_ulong(o, CKA_CLASS, cls)) rv = CKR_HOST_MEMORY;
  if (rv != CKR_OK) {
    obj_free(o);
    return rv;
  }
  *out = o;
  return CKR_OK;
}

/* Defaults every object has. */
static int storage_defaults(struct object *o, CK_BBOOL private_default) {
  return dflt_bool(o, CKA_TOKEN, CK_FALSE) && dflt_bool(o, CKA_PRIVATE, private_default) &&
         dflt_bool(o, CKA_MODIFIABLE, CK_TRUE) && dflt_bool(o, CKA_COPYABLE, CK_TRUE) &&
         dflt_bool(o, CKA_DESTROYABLE, CK_TRUE) && dflt_empty(o, CKA_LABEL);
}

/* May this session create (or destroy) an object with these CKA_TOKEN / CKA_PRIVATE values? */
static CK_RV may_write(const struct session *s, const struct object *o) {
  if (obj_bool(o, CKA_TOKEN, CK_FALSE) && !(s->flags & CKF_RW_SESSION)) return CKR_SESSION_READ_ONLY;
  if (obj_bool(o, CKA_PRIVATE, CK_TRUE) && g_login != LOGGED_IN_USER) return CKR_USER_NOT_LOGGED_IN;
  return CKR_OK;
}

/* ---- PINs: salted SHA-256 (a test token; a product would use a slow KDF) ---- */

static int pin_hash(const unsigned char salt[PIN_SALT_LEN], const CK_UTF8CHAR *pin, CK_ULONG len,
                    unsigned char out[PIN_HASH_LEN]) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  unsigned int n = 0;
  int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) && EVP_DigestUpdate(md, salt, PIN_SALT_LEN) &&
           EVP_DigestUpdate(md, pin, len) && EVP_DigestFinal_ex(md, out, &n) && n == PIN_HASH_LEN;
  EVP_MD_CTX_free(md);
  return ok;
}

static int pin_set(unsigned char salt[PIN_SALT_LEN], unsigned char hash[PIN_HASH_LEN], const CK_UTF8CHAR *pin,
                   CK_ULONG len) {
  return RAND_bytes(salt, PIN_SALT_LEN) == 1 && pin_hash(salt, pin, len, hash);
}

/* CKR_OK, CKR_PIN_INCORRECT, or CKR_GENERAL_ERROR. */
static CK_RV pin_check(const unsigned char salt[PIN_SALT_LEN], const unsigned char hash[PIN_HASH_LEN],
                       const CK_UTF8CHAR *pin, CK_ULONG len) {
  unsigned char h[PIN_HASH_LEN];
  if (!pin_hash(salt, pin, len, h)) return CKR_GENERAL_ERROR;
  return CRYPTO_memcmp(h, hash, PIN_HASH_LEN) == 0 ? CKR_OK : CKR_PIN_INCORRECT;
}

static CK_RV pin_shape(const CK_UTF8CHAR *pin, CK_ULONG len) {
  if (!pin) return CKR_ARGUMENTS_BAD; /* no protected authentication path */
  return len < MIN_PIN || len > MAX_PIN ? CKR_PIN_LEN_RANGE : CKR_OK;
}

/* ---- Sessions ---- */

static void end_sign(struct session *s) {
  s->sign = OP_NONE;
  OPENSSL_cleanse(s->sign_key, sizeof s->sign_key);
}

static void end_verify(struct session *s) { s->verify = OP_NONE; }

static void end_find(struct session *s) {
  free(s->found);
  s->found = NULL;
  s->found_count = s->found_next = 0;
  s->find = OP_NONE;
}

static void free_objects(int token_objects, CK_SESSION_HANDLE owner) {
  for (struct object **p = &g_objects; *p;) {
    struct object *o = *p;
    int doomed = token_objects ? o->session == 0 : o->session != 0 && (owner == 0 || o->session == owner);
    if (doomed) {
      *p = o->next;
      obj_free(o);
    } else {
      p = &o->next;
    }
  }
}

static void close_session(struct session *victim) {
  for (struct session **p = &g_sessions; *p; p = &(*p)->next)
    if (*p == victim) {
      *p = victim->next;
      break;
    }
  free_objects(0, victim->handle); /* its session objects go with it */
  end_sign(victim);
  end_find(victim);
  free(victim);
  if (!g_sessions) g_login = LOGGED_OUT; /* the login lasts while the application has a session */
}

static void close_all_sessions(void) {
  while (g_sessions) close_session(g_sessions);
}

/* ---- General purpose ---- */

/*
 * Fault emulation for the gateway's fault tests (a real HSM does these on its own):
 *   SM2TOKEN_USER_PIN_LOCKED=1   the user PIN is locked: C_Login(CKU_USER) answers CKR_PIN_LOCKED
 *   SM2TOKEN_SIGN_DELAY_MS=<ms>  every C_Sign takes that much longer (a slow or hanging HSM)
 * and, like an HSM's retry counter, 3 wrong user PINs in a row lock the user PIN until C_Finalize.
 */
#define USER_PIN_RETRIES 3
static int g_user_pin_failures;
static int g_user_pin_locked;
static unsigned long g_sign_delay_ms;

CK_RV C_Initialize(CK_VOID_PTR pInitArgs) {
  pthread_mutex_lock(&g_lock);
  if (g_initialized) return leave(CKR_CRYPTOKI_ALREADY_INITIALIZED);
  if (pInitArgs) {
    const CK_C_INITIALIZE_ARGS *a = pInitArgs;
    int given = (a->CreateMutex != NULL) + (a->DestroyMutex != NULL) + (a->LockMutex != NULL) + (a->UnlockMutex != NULL);
    if (a->pReserved || (given != 0 && given != 4)) return leave(CKR_ARGUMENTS_BAD);
    /* We lock with pthreads; application-supplied mutex functions alone (no CKF_OS_LOCKING_OK) we cannot honour. */
    if (given == 4 && !(a->flags & CKF_OS_LOCKING_OK)) return leave(CKR_CANT_LOCK);
  }
  const char *dir = getenv("SM2TOKEN_DIR");
  if (!dir || !*dir) {
    fprintf(stderr, "libsm2token: SM2TOKEN_DIR is not set\n");
    return leave(CKR_GENERAL_ERROR);
  }
  if (!store_open(dir)) {
    fprintf(stderr, "libsm2token: cannot use SM2TOKEN_DIR=%s\n", dir);
    return leave(CKR_GENERAL_ERROR);
  }
  struct object *loaded;
  if (!store_load(&g_token, &loaded)) {
    store_close();
    return leave(CKR_GENERAL_ERROR);
  }
  g_objects = NULL;
  while (loaded) {
    struct object *next = loaded->next;
    add_object(loaded, 0);
    loaded = next;
  }
  g_login = LOGGED_OUT;
  g_user_pin_failures = 0;
  const char *locked = getenv("SM2TOKEN_USER_PIN_LOCKED");
  g_user_pin_locked = locked && strcmp(locked, "1") == 0;
  const char *delay = getenv("SM2TOKEN_SIGN_DELAY_MS");
  g_sign_delay_ms = delay ? strtoul(delay, NULL, 10) : 0;
  g_initialized = 1;
  return leave(CKR_OK);
}

CK_RV C_Finalize(CK_VOID_PTR pReserved) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (pReserved) return leave(CKR_ARGUMENTS_BAD);
  close_all_sessions();
  free_objects(1, 0);
  free_objects(0, 0);
  OPENSSL_cleanse(&g_token, sizeof g_token);
  store_close();
  g_login = LOGGED_OUT;
  g_initialized = 0;
  return leave(CKR_OK);
}

CK_RV C_GetInfo(CK_INFO_PTR pInfo) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (!pInfo) return leave(CKR_ARGUMENTS_BAD);
  memset(pInfo, 0, sizeof *pInfo);
  pInfo->cryptokiVersion.major = 2;
  pInfo->cryptokiVersion.minor = 40;
  pad(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "hsm-gateway test");
  pad(pInfo->libraryDescription, sizeof pInfo->libraryDescription, "SM2 vendor HSM emulation");
  pInfo->libraryVersion.major = 1;
  return leave(CKR_OK);
}

/* ---- Slot and token management ---- */

CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  (void)tokenPresent; /* the one slot always holds the token */
  if (!pulCount) return leave(CKR_ARGUMENTS_BAD);
  if (pSlotList) {
    if (*pulCount < 1) rv = CKR_BUFFER_TOO_SMALL;
    else pSlotList[0] = SLOT_ID;
  }
  *pulCount = 1;
  return leave(rv);
}

CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (slotID != SLOT_ID) return leave(CKR_SLOT_ID_INVALID);
  if (!pInfo) return leave(CKR_ARGUMENTS_BAD);
  memset(pInfo, 0, sizeof *pInfo);
  pad(pInfo->slotDescription, sizeof pInfo->slotDescription, "SM2 vendor HSM emulation slot");
  pad(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "hsm-gateway test");
  pInfo->flags = CKF_TOKEN_PRESENT;
  pInfo->hardwareVersion.major = 1;
  pInfo->firmwareVersion.major = 1;
  return leave(CKR_OK);
}

CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (slotID != SLOT_ID) return leave(CKR_SLOT_ID_INVALID);
  if (!pInfo) return leave(CKR_ARGUMENTS_BAD);
  memset(pInfo, 0, sizeof *pInfo);
  if (g_token.initialized) memcpy(pInfo->label, g_token.label, sizeof pInfo->label);
  else pad(pInfo->label, sizeof pInfo->label, "");
  pad(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "hsm-gateway test");
  pad(pInfo->model, sizeof pInfo->model, "SM2 vendor emu");
  pad(pInfo->serialNumber, sizeof pInfo->serialNumber, g_token.initialized ? g_token.serial : "0000000000000000");
  pInfo->flags = CKF_RNG | CKF_LOGIN_REQUIRED | (g_token.initialized ? CKF_TOKEN_INITIALIZED : 0) |
                 (g_token.user_pin_set ? CKF_USER_PIN_INITIALIZED : 0);
  pInfo->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
  pInfo->ulSessionCount = count_sessions(0);
  pInfo->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
  pInfo->ulRwSessionCount = count_sessions(1);
  pInfo->ulMaxPinLen = MAX_PIN;
  pInfo->ulMinPinLen = MIN_PIN;
  pInfo->ulTotalPublicMemory = pInfo->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulTotalPrivateMemory = pInfo->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->hardwareVersion.major = 1;
  pInfo->firmwareVersion.major = 1;
  pad(pInfo->utcTime, sizeof pInfo->utcTime, ""); /* no clock */
  return leave(CKR_OK);
}

CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (slotID != SLOT_ID) return leave(CKR_SLOT_ID_INVALID);
  if (!pulCount) return leave(CKR_ARGUMENTS_BAD);
  if (pMechanismList) {
    if (*pulCount < COUNT(g_mechanisms)) rv = CKR_BUFFER_TOO_SMALL;
    else memcpy(pMechanismList, g_mechanisms, sizeof g_mechanisms);
  }
  *pulCount = COUNT(g_mechanisms);
  return leave(rv);
}

CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (slotID != SLOT_ID) return leave(CKR_SLOT_ID_INVALID);
  if (!pInfo) return leave(CKR_ARGUMENTS_BAD);
  pInfo->ulMinKeySize = pInfo->ulMaxKeySize = 256;
  if (type == CKM_VENDOR_SM2_KEY_PAIR_GEN)
    pInfo->flags = CKF_GENERATE_KEY_PAIR | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
  else if (type == CKM_VENDOR_SM2_SIGN_E || type == CKM_VENDOR_SM2_SIGN_E_DER)
    pInfo->flags = CKF_SIGN | CKF_VERIFY | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
  else
    rv = CKR_MECHANISM_INVALID;
  return leave(rv);
}

CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (slotID != SLOT_ID) return leave(CKR_SLOT_ID_INVALID);
  if (!pLabel) return leave(CKR_ARGUMENTS_BAD);
  if ((rv = pin_shape(pPin, ulPinLen)) != CKR_OK) return leave(rv);
  if (g_sessions) return leave(CKR_SESSION_EXISTS);
  /* Re-initializing an initialized token needs its SO PIN, and erases every object and the user PIN. */
  if (g_token.initialized && (rv = pin_check(g_token.so_salt, g_token.so_hash, pPin, ulPinLen)) != CKR_OK)
    return leave(rv);
  struct token_meta m;
  memset(&m, 0, sizeof m);
  unsigned char serial[8];
  /* 32 bytes, blank-padded by the caller (PKCS#11 v2.40, C_InitToken); a NUL ends it early (a C string). */
  memset(m.label, ' ', sizeof m.label);
  for (size_t i = 0; i < sizeof m.label && pLabel[i]; i++) m.label[i] = pLabel[i];
  if (RAND_bytes(serial, sizeof serial) != 1 || !pin_set(m.so_salt, m.so_hash, pPin, ulPinLen))
    return leave(CKR_GENERAL_ERROR);
  for (size_t i = 0; i < sizeof serial; i++) snprintf(m.serial + 2 * i, 3, "%02X", serial[i]);
  m.so_pin_set = 1;
  m.initialized = 1;
  if (!store_reset(&m)) return leave(CKR_DEVICE_ERROR);
  free_objects(1, 0);
  g_token = m;
  OPENSSL_cleanse(&m, sizeof m);
  return leave(CKR_OK);
}

CK_RV C_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (g_login != LOGGED_IN_SO) return leave(CKR_USER_NOT_LOGGED_IN);
  if (!(s->flags & CKF_RW_SESSION)) return leave(CKR_SESSION_READ_ONLY);
  if ((rv = pin_shape(pPin, ulPinLen)) != CKR_OK) return leave(rv);
  struct token_meta m = g_token;
  if (!pin_set(m.user_salt, m.user_hash, pPin, ulPinLen)) return leave(CKR_GENERAL_ERROR);
  m.user_pin_set = 1;
  if (!store_save_meta(&m)) return leave(CKR_DEVICE_ERROR);
  g_token = m;
  OPENSSL_cleanse(&m, sizeof m);
  return leave(CKR_OK);
}

CK_RV C_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin,
               CK_ULONG ulNewLen) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (!(s->flags & CKF_RW_SESSION)) return leave(CKR_SESSION_READ_ONLY);
  if (!pOldPin) return leave(CKR_ARGUMENTS_BAD);
  if ((rv = pin_shape(pNewPin, ulNewLen)) != CKR_OK) return leave(rv);
  /* The SO's PIN in an SO session, otherwise the user's (in a user or public session). */
  int so = g_login == LOGGED_IN_SO;
  struct token_meta m = g_token;
  unsigned char *salt = so ? m.so_salt : m.user_salt, *hash = so ? m.so_hash : m.user_hash;
  if (!so && !m.user_pin_set) return leave(CKR_USER_PIN_NOT_INITIALIZED);
  if ((rv = pin_check(salt, hash, pOldPin, ulOldLen)) != CKR_OK) return leave(rv);
  if (!pin_set(salt, hash, pNewPin, ulNewLen)) return leave(CKR_GENERAL_ERROR);
  if (!store_save_meta(&m)) return leave(CKR_DEVICE_ERROR);
  g_token = m;
  OPENSSL_cleanse(&m, sizeof m);
  return leave(CKR_OK);
}

/* ---- Sessions ---- */

CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
                    CK_SESSION_HANDLE_PTR phSession) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  (void)pApplication;
  (void)Notify; /* no callbacks: nothing here is slow enough to report progress */
  if (slotID != SLOT_ID) return leave(CKR_SLOT_ID_INVALID);
  if (!phSession) return leave(CKR_ARGUMENTS_BAD);
  if (!(flags & CKF_SERIAL_SESSION)) return leave(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
  if (!g_token.initialized) return leave(CKR_TOKEN_NOT_RECOGNIZED);
  if (!(flags & CKF_RW_SESSION) && g_login == LOGGED_IN_SO) return leave(CKR_SESSION_READ_WRITE_SO_EXISTS);
  struct session *s = calloc(1, sizeof *s);
  if (!s) return leave(CKR_HOST_MEMORY);
  s->handle = g_next_session++;
  s->flags = flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION);
  s->next = g_sessions;
  g_sessions = s;
  *phSession = s->handle;
  return leave(CKR_OK);
}

CK_RV C_CloseSession(CK_SESSION_HANDLE hSession) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  close_session(s);
  return leave(CKR_OK);
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slotID) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (slotID != SLOT_ID) return leave(CKR_SLOT_ID_INVALID);
  close_all_sessions();
  return leave(CKR_OK);
}

CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (!pInfo) return leave(CKR_ARGUMENTS_BAD);
  int rw = (s->flags & CKF_RW_SESSION) != 0;
  pInfo->slotID = SLOT_ID;
  pInfo->flags = s->flags;
  pInfo->ulDeviceError = 0;
  if (g_login == LOGGED_IN_SO) pInfo->state = CKS_RW_SO_FUNCTIONS;
  else if (g_login == LOGGED_IN_USER) pInfo->state = rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS;
  else pInfo->state = rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION;
  return leave(CKR_OK);
}

CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (!find_session(hSession)) return leave(CKR_SESSION_HANDLE_INVALID);
  if (userType != CKU_SO && userType != CKU_USER) return leave(CKR_USER_TYPE_INVALID);
  enum login wanted = userType == CKU_SO ? LOGGED_IN_SO : LOGGED_IN_USER;
  if (g_login == wanted) return leave(CKR_USER_ALREADY_LOGGED_IN);
  if (g_login != LOGGED_OUT) return leave(CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
  if (!pPin) return leave(CKR_ARGUMENTS_BAD);
  if (wanted == LOGGED_IN_SO) {
    if (count_sessions(0) != count_sessions(1)) return leave(CKR_SESSION_READ_ONLY_EXISTS);
    rv = pin_check(g_token.so_salt, g_token.so_hash, pPin, ulPinLen);
  } else {
    if (!g_token.user_pin_set) return leave(CKR_USER_PIN_NOT_INITIALIZED);
    if (g_user_pin_locked) return leave(CKR_PIN_LOCKED);
    rv = pin_check(g_token.user_salt, g_token.user_hash, pPin, ulPinLen);
    if (rv == CKR_PIN_INCORRECT && ++g_user_pin_failures >= USER_PIN_RETRIES) g_user_pin_locked = 1;
    if (rv == CKR_OK) g_user_pin_failures = 0;
  }
  if (rv == CKR_OK) g_login = wanted;
  return leave(rv);
}

CK_RV C_Logout(CK_SESSION_HANDLE hSession) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (!find_session(hSession)) return leave(CKR_SESSION_HANDLE_INVALID);
  if (g_login == LOGGED_OUT) return leave(CKR_USER_NOT_LOGGED_IN);
  g_login = LOGGED_OUT;
  return leave(CKR_OK);
}

/* ---- SM2 keys ---- */

/* SubjectPublicKeyInfo { AlgorithmIdentifier { id-ecPublicKey, SM2 curve }, BIT STRING 04||x||y }: 91 bytes. */
static const unsigned char spki_prefix[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d,
                                            0x02, 0x01, 0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82,
                                            0x2d, 0x03, 0x42, 0x00};

/* Attributes every SM2 key has; `local`: generated on the token (not imported). */
static int key_defaults(struct object *o, CK_BBOOL private_default, CK_BBOOL local) {
  CK_ULONG mech = local ? CKM_VENDOR_SM2_KEY_PAIR_GEN : CK_UNAVAILABLE_INFORMATION;
  return storage_defaults(o, private_default) && set_ulong(o, CKA_KEY_TYPE, CKK_VENDOR_SM2) &&
         dflt_empty(o, CKA_ID) && dflt_empty(o, CKA_SUBJECT) && dflt_empty(o, CKA_START_DATE) &&
         dflt_empty(o, CKA_END_DATE) && dflt_bool(o, CKA_DERIVE, CK_FALSE) && set_bool(o, CKA_LOCAL, local) &&
         set_ulong(o, CKA_KEY_GEN_MECHANISM, mech) &&
         obj_set(o, CKA_EC_PARAMS, SM2_EC_PARAMS_DER, SM2_EC_PARAMS_DER_LEN);
}

/* The public-key attributes, from the uncompressed point: CKA_EC_POINT (DER OCTET STRING) and the SPKI. */
static int public_key_attrs(struct object *pub, struct object *priv, const unsigned char point[SM2_POINT_LEN],
                            CK_BBOOL local) {
  unsigned char der_point[2 + SM2_POINT_LEN], spki[sizeof spki_prefix + SM2_POINT_LEN];
  der_point[0] = 0x04;
  der_point[1] = SM2_POINT_LEN;
  memcpy(der_point + 2, point, SM2_POINT_LEN);
  memcpy(spki, spki_prefix, sizeof spki_prefix);
  memcpy(spki + sizeof spki_prefix, point, SM2_POINT_LEN);
  return key_defaults(pub, CK_FALSE, local) && dflt_bool(pub, CKA_ENCRYPT, CK_FALSE) &&
         dflt_bool(pub, CKA_VERIFY, CK_TRUE) && dflt_bool(pub, CKA_VERIFY_RECOVER, CK_FALSE) &&
         dflt_bool(pub, CKA_WRAP, CK_FALSE) && dflt_bool(pub, CKA_TRUSTED, CK_FALSE) &&
         obj_set(pub, CKA_EC_POINT, der_point, sizeof der_point) &&
         obj_set(pub, CKA_PUBLIC_KEY_INFO, spki, sizeof spki) &&
         (!priv || obj_set(priv, CKA_PUBLIC_KEY_INFO, spki, sizeof spki));
}

/* The template may name the key type and curve, but only as SM2. */
static CK_RV check_sm2_template(const struct object *o) {
  const struct attr *params = obj_attr(o, CKA_EC_PARAMS);
  if (obj_ulong(o, CKA_KEY_TYPE, CKK_VENDOR_SM2) != CKK_VENDOR_SM2) return CKR_TEMPLATE_INCONSISTENT;
  if (params && (params->len != SM2_EC_PARAMS_DER_LEN || memcmp(params->value, SM2_EC_PARAMS_DER, params->len) != 0))
    return CKR_CURVE_NOT_SUPPORTED;
  return CKR_OK;
}

/* ---- Objects ---- */

CK_RV C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                     CK_OBJECT_HANDLE_PTR phObject) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (!phObject || (!pTemplate && ulCount)) return leave(CKR_ARGUMENTS_BAD);
  CK_OBJECT_CLASS cls = CK_UNAVAILABLE_INFORMATION;
  for (CK_ULONG i = 0; i < ulCount; i++)
    if (pTemplate[i].type == CKA_CLASS && pTemplate[i].pValue && pTemplate[i].ulValueLen == sizeof cls)
      memcpy(&cls, pTemplate[i].pValue, sizeof cls);
  if (cls == CK_UNAVAILABLE_INFORMATION) return leave(CKR_TEMPLATE_INCOMPLETE);
  /* Certificates, data objects and SM2 public keys (to verify with) can be imported; key pairs are generated. */
  if (cls != CKO_CERTIFICATE && cls != CKO_DATA && cls != CKO_PUBLIC_KEY) return leave(CKR_ATTRIBUTE_VALUE_INVALID);
  struct object *o;
  rv = cls == CKO_PUBLIC_KEY ? object_from_template(cls, pTemplate, ulCount, imported_attrs, COUNT(imported_attrs), &o)
                             : object_from_template(cls, pTemplate, ulCount, NULL, 0, &o);
  if (rv != CKR_OK) return leave(rv);
  int ok = 1;
  if (cls == CKO_CERTIFICATE) {
    if (!obj_attr(o, CKA_CERTIFICATE_TYPE) || !obj_attr(o, CKA_SUBJECT) || !obj_attr(o, CKA_VALUE))
      rv = CKR_TEMPLATE_INCOMPLETE;
    else if (obj_ulong(o, CKA_CERTIFICATE_TYPE, ~0UL) != CKC_X_509)
      rv = CKR_ATTRIBUTE_VALUE_INVALID; /* X.509 public-key certificates only */
    ok = storage_defaults(o, CK_FALSE) && dflt_bool(o, CKA_TRUSTED, CK_FALSE) && dflt_empty(o, CKA_ID) &&
         dflt_empty(o, CKA_ISSUER) && dflt_empty(o, CKA_SERIAL_NUMBER) &&
         (obj_attr(o, CKA_CERTIFICATE_CATEGORY) || set_ulong(o, CKA_CERTIFICATE_CATEGORY, 0));
  } else if (cls == CKO_DATA) {
    ok = storage_defaults(o, CK_FALSE) && dflt_empty(o, CKA_APPLICATION) && dflt_empty(o, CKA_OBJECT_ID) &&
         dflt_empty(o, CKA_VALUE);
  } else {
    /* CKA_KEY_TYPE CKK_VENDOR_SM2 and CKA_EC_POINT (DER OCTET STRING of 04 || x || y, a point of the curve) */
    const struct attr *point = obj_attr(o, CKA_EC_POINT);
    rv = !obj_attr(o, CKA_KEY_TYPE) || !point ? CKR_TEMPLATE_INCOMPLETE : check_sm2_template(o);
    if (rv == CKR_OK && (point->len != 2 + SM2_POINT_LEN || point->value[0] != 0x04 ||
                         point->value[1] != SM2_POINT_LEN || !sm2_point_valid(point->value + 2)))
      rv = CKR_ATTRIBUTE_VALUE_INVALID;
    if (rv == CKR_OK) {
      unsigned char xy[SM2_POINT_LEN]; /* a copy: public_key_attrs replaces CKA_EC_POINT */
      memcpy(xy, point->value + 2, SM2_POINT_LEN);
      ok = public_key_attrs(o, NULL, xy, CK_FALSE);
    }
  }
  if (rv == CKR_OK && !ok) rv = CKR_HOST_MEMORY;
  if (rv == CKR_OK) rv = may_write(s, o);
  int on_token = obj_bool(o, CKA_TOKEN, CK_FALSE);
  if (rv == CKR_OK && on_token && !store_save_objects(o, NULL)) rv = CKR_DEVICE_ERROR;
  if (rv != CKR_OK) {
    obj_free(o);
    return leave(rv);
  }
  add_object(o, on_token ? 0 : s->handle);
  *phObject = o->handle;
  return leave(CKR_OK);
}

CK_RV C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  struct object *o = find_object(hObject, NULL);
  if (!o) return leave(CKR_OBJECT_HANDLE_INVALID);
  if ((rv = may_write(s, o)) != CKR_OK) return leave(rv);
  if (!obj_bool(o, CKA_DESTROYABLE, CK_TRUE)) return leave(CKR_ACTION_PROHIBITED);
  if (o->session == 0 && !store_delete_object(o)) return leave(CKR_DEVICE_ERROR);
  unlink_object(o);
  obj_free(o);
  return leave(CKR_OK);
}

CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                          CK_ULONG ulCount) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (!find_session(hSession)) return leave(CKR_SESSION_HANDLE_INVALID);
  if (!pTemplate && ulCount) return leave(CKR_ARGUMENTS_BAD);
  const struct object *o = find_object(hObject, NULL);
  if (!o) return leave(CKR_OBJECT_HANDLE_INVALID);
  CK_OBJECT_CLASS cls = obj_ulong(o, CKA_CLASS, CKO_DATA);
  /* PKCS#11 v2.40 C_GetAttributeValue: every attribute is processed; any of the applicable errors is returned. */
  for (CK_ULONG i = 0; i < ulCount; i++) {
    CK_ATTRIBUTE *a = &pTemplate[i];
    if (!valid_for(cls, a->type)) {
      a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_ATTRIBUTE_TYPE_INVALID;
      continue;
    }
    if (is_secret(o, a->type)) { /* always CKA_SENSITIVE and never CKA_EXTRACTABLE */
      a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_ATTRIBUTE_SENSITIVE;
      continue;
    }
    const struct attr *v = obj_attr(o, a->type);
    CK_ULONG len = v ? v->len : 0; /* an attribute of the class that was never set is empty */
    if (!a->pValue) {
      a->ulValueLen = len;
    } else if (a->ulValueLen >= len) {
      if (len) memcpy(a->pValue, v->value, len);
      a->ulValueLen = len;
    } else {
      a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_BUFFER_TOO_SMALL;
    }
  }
  return leave(rv);
}

static int matches(const struct object *o, const CK_ATTRIBUTE *t, CK_ULONG n) {
  CK_OBJECT_CLASS cls = obj_ulong(o, CKA_CLASS, CKO_DATA);
  for (CK_ULONG i = 0; i < n; i++) {
    if (!valid_for(cls, t[i].type) || is_secret(o, t[i].type)) return 0;
    const struct attr *v = obj_attr(o, t[i].type);
    CK_ULONG len = v ? v->len : 0;
    if (len != t[i].ulValueLen || (len && memcmp(v->value, t[i].pValue, len) != 0)) return 0;
  }
  return 1;
}

CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (!pTemplate && ulCount) return leave(CKR_ARGUMENTS_BAD);
  for (CK_ULONG i = 0; i < ulCount; i++)
    if (!pTemplate[i].pValue && pTemplate[i].ulValueLen) return leave(CKR_ATTRIBUTE_VALUE_INVALID);
  if (s->find == OP_ACTIVE) return leave(CKR_OPERATION_ACTIVE);
  size_t n = 0;
  for (struct object *o = g_objects; o; o = o->next) n++;
  s->found = calloc(n ? n : 1, sizeof *s->found);
  if (!s->found) return leave(CKR_HOST_MEMORY);
  /* g_objects is newest first; report oldest first */
  for (struct object *o = g_objects; o; o = o->next)
    if (is_visible(o) && matches(o, pTemplate, ulCount)) s->found[s->found_count++] = o->handle;
  for (size_t i = 0; i < s->found_count / 2; i++) {
    CK_OBJECT_HANDLE h = s->found[i];
    s->found[i] = s->found[s->found_count - 1 - i];
    s->found[s->found_count - 1 - i] = h;
  }
  s->find = OP_ACTIVE;
  return leave(CKR_OK);
}

CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount,
                    CK_ULONG_PTR pulObjectCount) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (!pulObjectCount || (!phObject && ulMaxObjectCount)) return leave(CKR_ARGUMENTS_BAD);
  if (s->find != OP_ACTIVE) return leave(CKR_OPERATION_NOT_INITIALIZED);
  CK_ULONG n = 0;
  while (n < ulMaxObjectCount && s->found_next < s->found_count) {
    CK_OBJECT_HANDLE h = s->found[s->found_next++];
    if (find_object(h, NULL)) phObject[n++] = h; /* skip objects destroyed since C_FindObjectsInit */
  }
  *pulObjectCount = n;
  return leave(CKR_OK);
}

CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (s->find != OP_ACTIVE) return leave(CKR_OPERATION_NOT_INITIALIZED);
  end_find(s);
  return leave(CKR_OK);
}

/* ---- Key generation ---- */

CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate,
                        CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate,
                        CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey,
                        CK_OBJECT_HANDLE_PTR phPrivateKey) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (!pMechanism || !phPublicKey || !phPrivateKey) return leave(CKR_ARGUMENTS_BAD);
  if (pMechanism->mechanism != CKM_VENDOR_SM2_KEY_PAIR_GEN) return leave(CKR_MECHANISM_INVALID);
  if (pMechanism->pParameter || pMechanism->ulParameterLen) return leave(CKR_MECHANISM_PARAM_INVALID);

  struct object *pub = NULL, *priv = NULL;
  unsigned char d[SM2_SCALAR_LEN], point[SM2_POINT_LEN];
  rv = object_from_template(CKO_PUBLIC_KEY, pPublicKeyTemplate, ulPublicKeyAttributeCount, generated_attrs,
                            COUNT(generated_attrs), &pub);
  if (rv == CKR_OK)
    rv = object_from_template(CKO_PRIVATE_KEY, pPrivateKeyTemplate, ulPrivateKeyAttributeCount, generated_attrs,
                              COUNT(generated_attrs), &priv);
  if (rv == CKR_OK) rv = check_sm2_template(pub);
  if (rv == CKR_OK) rv = check_sm2_template(priv);
  /* No context-specific login on this token. */
  if (rv == CKR_OK && obj_bool(priv, CKA_ALWAYS_AUTHENTICATE, CK_FALSE)) rv = CKR_ATTRIBUTE_VALUE_INVALID;
  if (rv == CKR_OK && !sm2_generate(d, point)) rv = CKR_FUNCTION_FAILED;
  if (rv == CKR_OK) {
    int ok = public_key_attrs(pub, priv, point, CK_TRUE);
    /* The private key never leaves the token: sensitive and not extractable, whatever the template says. */
    ok = ok && key_defaults(priv, CK_TRUE, CK_TRUE) && set_bool(priv, CKA_SENSITIVE, CK_TRUE) &&
         set_bool(priv, CKA_EXTRACTABLE, CK_FALSE) && set_bool(priv, CKA_ALWAYS_SENSITIVE, CK_TRUE) &&
         set_bool(priv, CKA_NEVER_EXTRACTABLE, CK_TRUE) && dflt_bool(priv, CKA_DECRYPT, CK_FALSE) &&
         dflt_bool(priv, CKA_SIGN, CK_TRUE) && dflt_bool(priv, CKA_SIGN_RECOVER, CK_FALSE) &&
         dflt_bool(priv, CKA_UNWRAP, CK_FALSE) && dflt_bool(priv, CKA_WRAP_WITH_TRUSTED, CK_FALSE) &&
         dflt_bool(priv, CKA_ALWAYS_AUTHENTICATE, CK_FALSE) && obj_set(priv, CKA_VALUE, d, sizeof d);
    if (!ok) rv = CKR_HOST_MEMORY;
  }
  OPENSSL_cleanse(d, sizeof d);
  if (rv == CKR_OK) rv = may_write(s, pub);
  if (rv == CKR_OK) rv = may_write(s, priv);
  if (rv == CKR_OK) {
    /* Both token objects in one locked write (a key pair is never half stored). */
    int pub_token = obj_bool(pub, CKA_TOKEN, CK_FALSE), priv_token = obj_bool(priv, CKA_TOKEN, CK_FALSE);
    struct object *first = pub_token ? pub : priv_token ? priv : NULL;
    struct object *second = pub_token && priv_token ? priv : NULL;
    if (first && !store_save_objects(first, second)) rv = CKR_DEVICE_ERROR;
  }
  if (rv != CKR_OK) {
    obj_free(pub);
    obj_free(priv);
    return leave(rv);
  }
  add_object(pub, obj_bool(pub, CKA_TOKEN, CK_FALSE) ? 0 : s->handle);
  add_object(priv, obj_bool(priv, CKA_TOKEN, CK_FALSE) ? 0 : s->handle);
  *phPublicKey = pub->handle;
  *phPrivateKey = priv->handle;
  return leave(CKR_OK);
}

/* ---- Signing and verification (single-part) ---- */

static CK_RV check_sign_mechanism(const CK_MECHANISM *m) {
  if (!m) return CKR_ARGUMENTS_BAD;
  if (m->mechanism != CKM_VENDOR_SM2_SIGN_E && m->mechanism != CKM_VENDOR_SM2_SIGN_E_DER) return CKR_MECHANISM_INVALID;
  if (m->pParameter || m->ulParameterLen) return CKR_MECHANISM_PARAM_INVALID;
  return CKR_OK;
}

/* The key for C_SignInit / C_VerifyInit: an SM2 key of class cls that permits `usage`. */
static CK_RV usable_key(CK_OBJECT_HANDLE h, CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE usage, const struct attr **value) {
  int hidden;
  const struct object *o = find_object(h, &hidden);
  if (!o) return hidden ? CKR_USER_NOT_LOGGED_IN : CKR_KEY_HANDLE_INVALID;
  if (obj_ulong(o, CKA_CLASS, CKO_DATA) != cls || obj_ulong(o, CKA_KEY_TYPE, CKK_RSA) != CKK_VENDOR_SM2)
    return CKR_KEY_TYPE_INCONSISTENT;
  if (!obj_bool(o, usage, CK_FALSE)) return CKR_KEY_FUNCTION_NOT_PERMITTED;
  *value = obj_attr(o, cls == CKO_PRIVATE_KEY ? CKA_VALUE : CKA_EC_POINT);
  return CKR_OK;
}

CK_RV C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (s->sign == OP_ACTIVE) return leave(CKR_OPERATION_ACTIVE);
  if ((rv = check_sign_mechanism(pMechanism)) != CKR_OK) return leave(rv);
  const struct attr *d;
  if ((rv = usable_key(hKey, CKO_PRIVATE_KEY, CKA_SIGN, &d)) != CKR_OK) return leave(rv);
  if (!d || d->len != SM2_SCALAR_LEN) return leave(CKR_KEY_HANDLE_INVALID); /* a damaged store file */
  memcpy(s->sign_key, d->value, SM2_SCALAR_LEN);
  s->sign_mech = pMechanism->mechanism;
  s->sign = OP_ACTIVE;
  return leave(CKR_OK);
}

CK_RV C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
             CK_ULONG_PTR pulSignatureLen) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (s->sign != OP_ACTIVE) return leave(CKR_OPERATION_NOT_INITIALIZED);
  /* Every return below ends the operation, except a length query and CKR_BUFFER_TOO_SMALL (PKCS#11 v2.40, C_Sign). */
  if (!pulSignatureLen || (!pData && ulDataLen)) rv = CKR_ARGUMENTS_BAD;
  else if (ulDataLen != 32) rv = CKR_DATA_LEN_RANGE; /* e = SM3(Z_A || M) */
  if (rv != CKR_OK) {
    end_sign(s);
    return leave(rv);
  }
  int der = s->sign_mech == CKM_VENDOR_SM2_SIGN_E_DER;
  /* The DER form is at most 72 bytes; that is what we report and ask for (as some HSMs do). */
  CK_ULONG needed = der ? SM2_DER_SIG_MAX : SM2_SIG_LEN;
  if (!pSignature) {
    *pulSignatureLen = needed;
    return leave(CKR_OK);
  }
  if (*pulSignatureLen < needed) {
    *pulSignatureLen = needed;
    return leave(CKR_BUFFER_TOO_SMALL);
  }
  unsigned char d[SM2_SCALAR_LEN], rs[SM2_SIG_LEN];
  memcpy(d, s->sign_key, sizeof d);
  end_sign(s);
  pthread_mutex_unlock(&g_lock); /* the curve arithmetic runs unlocked, in parallel with other sessions */
  if (g_sign_delay_ms) {
    struct timespec pause = {(time_t)(g_sign_delay_ms / 1000), (long)(g_sign_delay_ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
  }

  rv = CKR_FUNCTION_FAILED;
  if (sm2_sign_e(d, pData, rs)) {
    if (!der) {
      memcpy(pSignature, rs, SM2_SIG_LEN);
      *pulSignatureLen = SM2_SIG_LEN;
      rv = CKR_OK;
    } else {
      size_t n = sm2_rs_to_der(rs, pSignature);
      if (n) {
        *pulSignatureLen = n;
        rv = CKR_OK;
      }
    }
  }
  OPENSSL_cleanse(d, sizeof d);
  return rv;
}

CK_RV C_VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (s->verify == OP_ACTIVE) return leave(CKR_OPERATION_ACTIVE);
  if ((rv = check_sign_mechanism(pMechanism)) != CKR_OK) return leave(rv);
  const struct attr *point;
  if ((rv = usable_key(hKey, CKO_PUBLIC_KEY, CKA_VERIFY, &point)) != CKR_OK) return leave(rv);
  /* CKA_EC_POINT is 04 41 || 04 || x || y */
  if (!point || point->len != 2 + SM2_POINT_LEN || point->value[0] != 0x04 || point->value[1] != SM2_POINT_LEN)
    return leave(CKR_KEY_HANDLE_INVALID);
  memcpy(s->verify_key, point->value + 2, SM2_POINT_LEN);
  s->verify_mech = pMechanism->mechanism;
  s->verify = OP_ACTIVE;
  return leave(CKR_OK);
}

CK_RV C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
               CK_ULONG ulSignatureLen) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  struct session *s = find_session(hSession);
  if (!s) return leave(CKR_SESSION_HANDLE_INVALID);
  if (s->verify != OP_ACTIVE) return leave(CKR_OPERATION_NOT_INITIALIZED);
  unsigned char pub[SM2_POINT_LEN], rs[SM2_SIG_LEN];
  int der = s->verify_mech == CKM_VENDOR_SM2_SIGN_E_DER;
  memcpy(pub, s->verify_key, sizeof pub);
  end_verify(s); /* a call to C_Verify always ends the operation */
  pthread_mutex_unlock(&g_lock);

  if ((!pData && ulDataLen) || (!pSignature && ulSignatureLen)) return CKR_ARGUMENTS_BAD;
  if (ulDataLen != 32) return CKR_DATA_LEN_RANGE;
  if (!der) {
    if (ulSignatureLen != SM2_SIG_LEN) return CKR_SIGNATURE_LEN_RANGE;
    memcpy(rs, pSignature, SM2_SIG_LEN);
  } else {
    if (ulSignatureLen < 8 || ulSignatureLen > SM2_DER_SIG_MAX) return CKR_SIGNATURE_LEN_RANGE;
    if (!sm2_der_to_rs(pSignature, ulSignatureLen, rs)) return CKR_SIGNATURE_INVALID;
  }
  switch (sm2_verify_e(pub, pData, rs)) {
  case 1: return CKR_OK;
  case 0: return CKR_SIGNATURE_INVALID;
  default: return CKR_FUNCTION_FAILED;
  }
}

/* ---- Random numbers ---- */

CK_RV C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (!find_session(hSession)) return leave(CKR_SESSION_HANDLE_INVALID);
  if (!RandomData && ulRandomLen) return leave(CKR_ARGUMENTS_BAD);
  if (ulRandomLen > 0x7fffffffUL) return leave(CKR_ARGUMENTS_BAD);
  return leave(ulRandomLen == 0 || RAND_bytes(RandomData, (int)ulRandomLen) == 1 ? CKR_OK : CKR_FUNCTION_FAILED);
}

CK_RV C_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  (void)pSeed;
  (void)ulSeedLen;
  if (!find_session(hSession)) return leave(CKR_SESSION_HANDLE_INVALID);
  return leave(CKR_RANDOM_SEED_NOT_SUPPORTED);
}

/* ---- Not implemented: every other v2.40 function ---- */

#define NOT_SUPPORTED(name, args) \
  CK_RV name args { return CKR_FUNCTION_NOT_SUPPORTED; }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
NOT_SUPPORTED(C_GetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
NOT_SUPPORTED(C_SetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e))
NOT_SUPPORTED(C_CopyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e))
NOT_SUPPORTED(C_GetObjectSize, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ULONG_PTR c))
NOT_SUPPORTED(C_SetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d))
NOT_SUPPORTED(C_EncryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
NOT_SUPPORTED(C_Encrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_EncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_EncryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
NOT_SUPPORTED(C_DecryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
NOT_SUPPORTED(C_Decrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_DecryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_DecryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
NOT_SUPPORTED(C_DigestInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b))
NOT_SUPPORTED(C_Digest, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_DigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
NOT_SUPPORTED(C_DigestKey, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b))
NOT_SUPPORTED(C_DigestFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
NOT_SUPPORTED(C_SignUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
NOT_SUPPORTED(C_SignFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c))
NOT_SUPPORTED(C_SignRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
NOT_SUPPORTED(C_SignRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_VerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
NOT_SUPPORTED(C_VerifyFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c))
NOT_SUPPORTED(C_VerifyRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c))
NOT_SUPPORTED(C_VerifyRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_DigestEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_DecryptDigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_SignEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e))
NOT_SUPPORTED(C_GenerateKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e))
NOT_SUPPORTED(C_WrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d, CK_BYTE_PTR e,
                          CK_ULONG_PTR f))
NOT_SUPPORTED(C_UnwrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG e,
                            CK_ATTRIBUTE_PTR f, CK_ULONG g, CK_OBJECT_HANDLE_PTR h))
NOT_SUPPORTED(C_DeriveKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_ATTRIBUTE_PTR d, CK_ULONG e,
                            CK_OBJECT_HANDLE_PTR f))
NOT_SUPPORTED(C_WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c))
/* Legacy functions: the standard itself says they return CKR_FUNCTION_NOT_PARALLEL. */
CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE a) { return CKR_FUNCTION_NOT_PARALLEL; }
CK_RV C_CancelFunction(CK_SESSION_HANDLE a) { return CKR_FUNCTION_NOT_PARALLEL; }
#pragma GCC diagnostic pop

/* ---- The function list: all 68 entries, in the standard order ---- */

#define FUNCTION_POINTER(name, args) name,
static CK_FUNCTION_LIST g_function_list = {{2, 40}, SM2TOKEN_PKCS11_FUNCTIONS(FUNCTION_POINTER)};

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) {
  if (!ppFunctionList) return CKR_ARGUMENTS_BAD;
  *ppFunctionList = &g_function_list;
  return CKR_OK;
}
