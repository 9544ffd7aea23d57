/*
 * stress.c: many threads sign through the emulated network HSM while the main thread fires control commands at
 * it (invalidations, device-error windows, hangs, one-shot errors, delay changes). Built with ThreadSanitizer by
 * `NETSIM_SANITIZE=1 bash scripts/build-netsim.sh`; test/integration/netsim.test.ts runs it.
 *
 *   SOFTHSM2_CONF=… NETSIM_CONTROL=<dir> netsim-stress-tsan <module.so> <user-pin> [threads] [ms]
 *
 * The token needs an initialized user PIN. Exit status 0 when every answer was one the faults explain, and never
 * CKR_OPERATION_ACTIVE (a faulted call that ends an operation must end it in the real module too).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../netsim.h"

static CK_FUNCTION_LIST_PTR p11;
static const char *pin;
static CK_SLOT_ID slot;
static const char LABEL[] = "netsim-stress";
static atomic_int stop;
static atomic_ulong signatures, unexpected, by_rv[0x200];

static void count(CK_RV rv, const char *where) {
  atomic_fetch_add(&by_rv[rv < 0x200 ? rv : 0x1ff], 1);
  switch (rv) {
    case CKR_OK:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_DEVICE_ERROR:
    case CKR_GENERAL_ERROR:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_USER_ALREADY_LOGGED_IN:
    case CKR_KEY_HANDLE_INVALID:
    case CKR_OBJECT_HANDLE_INVALID:
      return;
    default:
      atomic_fetch_add(&unexpected, 1);
      fprintf(stderr, "stress: %s answered 0x%lx\n", where, rv);
  }
}

static void *worker(void *arg) {
  CK_SESSION_HANDLE h = 0;
  unsigned char digest[32], sig[128];
  memset(digest, (int)(long)arg, sizeof digest);
  CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
  CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE find[] = {{CKA_CLASS, &private_class, sizeof private_class}, {CKA_LABEL, (void *)LABEL, sizeof LABEL - 1}};
  CK_OBJECT_HANDLE private_key = 0;
  while (!atomic_load(&stop)) {
    CK_RV rv;
    if (!h) {
      rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h);
      count(rv, "C_OpenSession");
      if (rv != CKR_OK) {
        h = 0;
        continue;
      }
      count(p11->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), "C_Login");
    }
    if (!private_key) {
      /* SoftHSMv2 forgets the handles of private objects when the user is logged out (its last session closed). */
      CK_ULONG found = 0;
      rv = p11->C_FindObjectsInit(h, find, 2);
      count(rv, "C_FindObjectsInit");
      if (rv == CKR_OK) {
        count(p11->C_FindObjects(h, &private_key, 1, &found), "C_FindObjects");
        count(p11->C_FindObjectsFinal(h), "C_FindObjectsFinal");
      }
      if (!found) private_key = 0;
      if (!private_key) {
        /* Not logged in: start over. A failed C_FindObjectsInit costs the session, as in the gateway: SoftHSMv2 2.6.1
         * answers CKR_GENERAL_ERROR with the search left open (seen while other threads log out; the session would then
         * answer CKR_OPERATION_ACTIVE, a module defect, not the emulator's). */
        if (rv == CKR_OK) p11->C_Logout(h);
        p11->C_CloseSession(h), h = 0;
        continue;
      }
    }
    rv = p11->C_SignInit(h, &ecdsa, private_key);
    count(rv, "C_SignInit");
    if (rv == CKR_OK) {
      CK_ULONG len = sizeof sig;
      rv = p11->C_Sign(h, digest, sizeof digest, sig, &len);
      count(rv, "C_Sign");
      if (rv == CKR_OK) atomic_fetch_add(&signatures, 1);
    }
    if (rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID) private_key = 0;
    if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_USER_NOT_LOGGED_IN) {
      p11->C_CloseSession(h); /* a dead handle answers CKR_SESSION_HANDLE_INVALID: ignored */
      h = 0;
    }
  }
  if (h) p11->C_CloseSession(h);
  return NULL;
}

static int command(const char *dir, const char *line) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s/netsim-%ld.sock", dir, (long)getpid());
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) return -1;
  char buf[4096];
  snprintf(buf, sizeof buf, "%s\n", line);
  send(fd, buf, strlen(buf), MSG_NOSIGNAL);
  shutdown(fd, SHUT_WR);
  ssize_t n, used = 0;
  while ((n = recv(fd, buf + used, sizeof buf - 1 - (size_t)used, 0)) > 0) used += n;
  close(fd);
  buf[used] = 0;
  return strstr(buf, "ok") == buf || strstr(buf, "\nok") ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s <module.so> <user-pin> [threads] [ms]\n", argv[0]);
    return 1;
  }
  pin = argv[2];
  int nthreads = argc > 3 ? atoi(argv[3]) : 8, ms = argc > 4 ? atoi(argv[4]) : 3000;
  const char *dir = getenv("NETSIM_CONTROL");
  void *dl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  CK_C_GetFunctionList get = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
  if (!get || get(&p11) != CKR_OK || !dir) {
    fprintf(stderr, "stress: cannot load %s (%s), or NETSIM_CONTROL unset\n", argv[1], dl ? "" : dlerror());
    return 1;
  }
  CK_C_INITIALIZE_ARGS init = {.flags = CKF_OS_LOCKING_OK};
  CK_SLOT_ID slots[16];
  CK_ULONG nslots = 16;
  CK_SESSION_HANDLE h;
  /* The first slot: SoftHSMv2 lists the initialized tokens first, then one free slot. */
  if (p11->C_Initialize(&init) != CKR_OK || p11->C_GetSlotList(CK_TRUE, slots, &nslots) != CKR_OK || nslots < 1 ||
      (slot = slots[0], 0) ||
      p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h) != CKR_OK ||
      p11->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)) != CKR_OK) {
    fprintf(stderr, "stress: cannot open the token\n");
    return 1;
  }
  /* A token key pair: it outlives the sessions the faults close. */
  static const unsigned char p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE pub[] = {{CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_EC_PARAMS, (void *)p256, sizeof p256}};
  CK_ATTRIBUTE priv[] = {
      {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_LABEL, (void *)LABEL, sizeof LABEL - 1}};
  CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
  CK_OBJECT_HANDLE public_key, private_key;
  if (p11->C_GenerateKeyPair(h, &gen, pub, 3, priv, 4, &public_key, &private_key) != CKR_OK) {
    fprintf(stderr, "stress: cannot generate a P-256 key pair\n");
    return 1;
  }
  p11->C_CloseSession(h);

  pthread_t *threads = calloc((size_t)nthreads, sizeof *threads);
  for (long i = 0; i < nthreads; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
  static const char *const commands[] = {
      "invalidate-sessions",  "invalidate-sessions keep-login", "device-error 15", "hang 10",
      "general-error-next C_Sign", "error-next CKR_DEVICE_ERROR C_Sign*", "general-error-next", "set-delay default 200",
      "set-delay C_Sign 500", "status", "reset",
  };
  int failed_commands = 0, sent = 0;
  struct timespec pause = {.tv_nsec = 5 * 1000000};
  for (int t = 0; t < ms; t += 5, sent++) {
    if (command(dir, commands[sent % (sizeof commands / sizeof commands[0])]) != 0) failed_commands++;
    nanosleep(&pause, NULL);
  }
  command(dir, "reset");
  atomic_store(&stop, 1);
  for (int i = 0; i < nthreads; i++) pthread_join(threads[i], NULL);
  free(threads);
  CK_RV fin = p11->C_Finalize(NULL);

  printf("signatures %lu, commands %d (%d failed), unexpected answers %lu, C_Finalize 0x%lx\n",
         atomic_load(&signatures), sent, failed_commands, atomic_load(&unexpected), fin);
  for (int rv = 0; rv < 0x200; rv++)
    if (atomic_load(&by_rv[rv])) printf("  0x%03x: %lu\n", rv, atomic_load(&by_rv[rv]));
  return atomic_load(&unexpected) || failed_commands || !atomic_load(&signatures) || fin != CKR_OK ? 1 : 0;
}
