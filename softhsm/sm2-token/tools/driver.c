/*
 * driver.c: a small C client of the SM2 test token for memory checks (AddressSanitizer with leak detection, or
 * valgrind): it loads the module with dlopen + C_GetFunctionList as pkcs11js does, and runs token set-up, key
 * generation, sign/verify in both output forms, objects, a restart (persistence), and THREADS threads that sign
 * and verify in parallel, each on its own session. Exit status 0 when every check passed.
 *
 *   SM2TOKEN_DIR=$(mktemp -d) build/sm2token-driver-asan build/libsm2token-asan.so
 */
#define _DEFAULT_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sm2-vendor.h"

#define THREADS 8
#define SIGNATURES 25

static CK_FUNCTION_LIST *p11;
static CK_OBJECT_HANDLE g_priv, g_pub;

#define CHECK(call, expected)                                                                                    \
  do {                                                                                                          \
    CK_RV rv_ = (call);                                                                                         \
    if (rv_ != (CK_RV)(expected)) {                                                                             \
      fprintf(stderr, "driver.c:%d: %s returned 0x%lx, expected 0x%lx\n", __LINE__, #call, rv_, (CK_RV)(expected)); \
      exit(1);                                                                                                  \
    }                                                                                                           \
  } while (0)

static void fill(unsigned char *b, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(seed * 131 + i * 7);
}

/* Signs e with the mechanism and verifies it; a changed e must not verify. */
static void sign_verify(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech, unsigned seed) {
  CK_MECHANISM m = {mech, NULL, 0};
  unsigned char e[32], sig[72];
  CK_ULONG len = sizeof sig;
  fill(e, sizeof e, seed);
  CHECK(p11->C_SignInit(s, &m, g_priv), CKR_OK);
  CHECK(p11->C_Sign(s, e, sizeof e, sig, &len), CKR_OK);
  CHECK(p11->C_VerifyInit(s, &m, g_pub), CKR_OK);
  CHECK(p11->C_Verify(s, e, sizeof e, sig, len), CKR_OK);
  e[0] ^= 1;
  CHECK(p11->C_VerifyInit(s, &m, g_pub), CKR_OK);
  CHECK(p11->C_Verify(s, e, sizeof e, sig, len), CKR_SIGNATURE_INVALID);
}

static void *worker(void *arg) {
  unsigned id = (unsigned)(size_t)arg;
  CK_SESSION_HANDLE s;
  CHECK(p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  for (unsigned i = 0; i < SIGNATURES; i++)
    sign_verify(s, i % 2 ? CKM_VENDOR_SM2_SIGN_E_DER : CKM_VENDOR_SM2_SIGN_E, id * 1000 + i);
  CHECK(p11->C_CloseSession(s), CKR_OK);
  return NULL;
}

static CK_OBJECT_HANDLE find_one(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label) {
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)}};
  CK_OBJECT_HANDLE found[2];
  CK_ULONG n = 0;
  CHECK(p11->C_FindObjectsInit(s, t, 2), CKR_OK);
  CHECK(p11->C_FindObjects(s, found, 2, &n), CKR_OK);
  CHECK(p11->C_FindObjectsFinal(s), CKR_OK);
  if (n != 1) {
    fprintf(stderr, "driver.c: %lu objects labelled %s\n", n, label);
    exit(1);
  }
  return found[0];
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: SM2TOKEN_DIR=<empty dir> %s <libsm2token.so>\n", argv[0]);
    return 2;
  }
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "driver.c: %s\n", dlerror());
    return 1;
  }
  CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
  CHECK(get(&p11), CKR_OK);
  CK_C_INITIALIZE_ARGS args = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
  CHECK(p11->C_Initialize(&args), CKR_OK);
  CHECK(p11->C_Initialize(&args), CKR_CRYPTOKI_ALREADY_INITIALIZED);

  unsigned char label[32];
  memset(label, ' ', sizeof label);
  memcpy(label, "driver", 6);
  CHECK(p11->C_InitToken(0, (CK_UTF8CHAR_PTR) "so-pin-1", 8, label), CKR_OK);
  CK_SESSION_HANDLE s;
  CHECK(p11->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
  CHECK(p11->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR) "so-pin-1", 8), CKR_OK);
  CHECK(p11->C_InitPIN(s, (CK_UTF8CHAR_PTR) "user-pin", 8), CKR_OK);
  CHECK(p11->C_Logout(s), CKR_OK);
  CHECK(p11->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "wrong-pin", 9), CKR_PIN_INCORRECT);
  CHECK(p11->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "user-pin", 8), CKR_OK);

  /* A token key pair and a session key pair (freed with its session). */
  CK_MECHANISM gen = {CKM_VENDOR_SM2_KEY_PAIR_GEN, NULL, 0};
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ATTRIBUTE pub_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_LABEL, "k", 1}, {CKA_VERIFY, &yes, 1},
                          {CKA_EC_PARAMS, SM2_EC_PARAMS_DER, SM2_EC_PARAMS_DER_LEN}};
  CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_LABEL, "k", 1}, {CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &yes, 1}};
  CHECK(p11->C_GenerateKeyPair(s, &gen, pub_t, 4, priv_t, 4, &g_pub, &g_priv), CKR_OK);
  CK_ATTRIBUTE session_t[] = {{CKA_TOKEN, &no, 1}};
  CK_OBJECT_HANDLE spub, spriv;
  CHECK(p11->C_GenerateKeyPair(s, &gen, session_t, 1, session_t, 1, &spub, &spriv), CKR_OK);

  /* Attributes: lengths, values, the secret. */
  unsigned char point[67];
  CK_ATTRIBUTE a = {CKA_EC_POINT, NULL, 0};
  CHECK(p11->C_GetAttributeValue(s, g_pub, &a, 1), CKR_OK);
  if (a.ulValueLen != 67) return fprintf(stderr, "driver.c: CKA_EC_POINT is %lu bytes\n", a.ulValueLen), 1;
  a.pValue = point;
  CHECK(p11->C_GetAttributeValue(s, g_pub, &a, 1), CKR_OK);
  CK_ATTRIBUTE secret = {CKA_VALUE, NULL, 0};
  CHECK(p11->C_GetAttributeValue(s, g_priv, &secret, 1), CKR_ATTRIBUTE_SENSITIVE);

  /* Single-part operation rules. */
  CK_MECHANISM m = {CKM_VENDOR_SM2_SIGN_E, NULL, 0};
  unsigned char e[32] = {1}, sig[72];
  CK_ULONG len = 0;
  CHECK(p11->C_SignInit(s, &m, g_priv), CKR_OK);
  CHECK(p11->C_SignInit(s, &m, g_priv), CKR_OPERATION_ACTIVE);
  CHECK(p11->C_Sign(s, e, 32, NULL, &len), CKR_OK);
  len = 10;
  CHECK(p11->C_Sign(s, e, 32, sig, &len), CKR_BUFFER_TOO_SMALL);
  CHECK(p11->C_Sign(s, e, 32, sig, &len), CKR_OK);
  CHECK(p11->C_Sign(s, e, 32, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
  CHECK(p11->C_SignInit(s, &m, g_priv), CKR_OK);
  CHECK(p11->C_Sign(s, e, 31, sig, &len), CKR_DATA_LEN_RANGE);
  sign_verify(s, CKM_VENDOR_SM2_SIGN_E, 1);
  sign_verify(s, CKM_VENDOR_SM2_SIGN_E_DER, 2);

  /* A certificate-shaped and a data object, found and destroyed. */
  CK_OBJECT_CLASS cert = CKO_CERTIFICATE, data = CKO_DATA;
  CK_CERTIFICATE_TYPE x509 = CKC_X_509;
  CK_ATTRIBUTE cert_t[] = {{CKA_CLASS, &cert, sizeof cert}, {CKA_CERTIFICATE_TYPE, &x509, sizeof x509},
                           {CKA_TOKEN, &yes, 1}, {CKA_LABEL, "c", 1}, {CKA_SUBJECT, "\x30\x00", 2},
                           {CKA_VALUE, "\x30\x00", 2}};
  CK_ATTRIBUTE data_t[] = {{CKA_CLASS, &data, sizeof data}, {CKA_LABEL, "d", 1}, {CKA_VALUE, "v", 1}};
  CK_OBJECT_HANDLE c, d;
  CHECK(p11->C_CreateObject(s, cert_t, 6, &c), CKR_OK);
  CHECK(p11->C_CreateObject(s, data_t, 3, &d), CKR_OK);
  if (find_one(s, CKO_CERTIFICATE, "c") != c || find_one(s, CKO_DATA, "d") != d) return 1;
  CHECK(p11->C_DestroyObject(s, c), CKR_OK);
  CHECK(p11->C_DestroyObject(s, d), CKR_OK);

  /* Parallel signing: one session per thread. */
  pthread_t threads[THREADS];
  for (size_t i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
  for (size_t i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);

  /* Restart: the token key pair is still there, the session key pair is gone. */
  CHECK(p11->C_Finalize(NULL), CKR_OK);
  CHECK(p11->C_Initialize(&args), CKR_OK);
  CHECK(p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CHECK(p11->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "user-pin", 8), CKR_OK);
  g_priv = find_one(s, CKO_PRIVATE_KEY, "k");
  g_pub = find_one(s, CKO_PUBLIC_KEY, "k");
  sign_verify(s, CKM_VENDOR_SM2_SIGN_E, 3);
  CHECK(p11->C_Finalize(NULL), CKR_OK);
  dlclose(lib);
  printf("driver: ok (%d threads x %d signatures)\n", THREADS, SIGNATURES);
  return 0;
}
