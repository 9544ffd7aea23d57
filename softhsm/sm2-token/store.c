/*
 * store.c: objects as attribute lists, and the file store under $SM2TOKEN_DIR (layout in sm2token.h).
 *
 * Several processes may use the same directory. Writers take an exclusive flock on .lock; a load (at
 * C_Initialize) takes a shared one. A process reads the store only in C_Initialize: objects that another process
 * creates or destroys later are seen after the next C_Finalize + C_Initialize.
 *
 * This is a TEST token: private keys are stored in clear (files mode 0600 in a 0700 directory).
 */
#define _DEFAULT_SOURCE /* flock, fsync, strdup */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sm2token.h"

/* ---- Attribute lists ---- */

struct attr *obj_attr(const struct object *o, CK_ATTRIBUTE_TYPE type) {
  for (size_t i = 0; i < o->count; i++)
    if (o->attrs[i].type == type) return &o->attrs[i];
  return NULL;
}

int obj_set(struct object *o, CK_ATTRIBUTE_TYPE type, const void *value, CK_ULONG len) {
  unsigned char *copy = NULL;
  if (len > 0) {
    if (!(copy = malloc(len))) return 0;
    memcpy(copy, value, len);
  }
  struct attr *a = obj_attr(o, type);
  if (!a) {
    if (o->count == o->capacity) {
      size_t cap = o->capacity ? o->capacity * 2 : 16;
      struct attr *grown = realloc(o->attrs, cap * sizeof *grown);
      if (!grown) {
        free(copy);
        return 0;
      }
      o->attrs = grown;
      o->capacity = cap;
    }
    a = &o->attrs[o->count++];
    a->type = type;
  } else if (a->value) {
    OPENSSL_clear_free(a->value, a->len);
  }
  a->value = copy;
  a->len = len;
  return 1;
}

void obj_free(struct object *o) {
  if (!o) return;
  for (size_t i = 0; i < o->count; i++)
    if (o->attrs[i].value) OPENSSL_clear_free(o->attrs[i].value, o->attrs[i].len);
  free(o->attrs);
  free(o);
}

/* ---- Paths, locking, atomic writes ---- */

static char g_dir[PATH_MAX];
static int g_lock_fd = -1;

static int path_of(char *out, const char *name) {
  int n = snprintf(out, PATH_MAX, "%s/%s", g_dir, name);
  return n > 0 && n < PATH_MAX;
}

/* mkdir -p with mode 0700 for the directories it creates. */
static int make_dirs(const char *dir) {
  char buf[PATH_MAX];
  size_t len = strlen(dir);
  if (len == 0 || len >= sizeof buf) return 0;
  memcpy(buf, dir, len + 1);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0700) != 0 && errno != EEXIST) return 0;
    *p = '/';
  }
  if (mkdir(buf, 0700) != 0 && errno != EEXIST) return 0;
  struct stat st;
  return stat(buf, &st) == 0 && S_ISDIR(st.st_mode);
}

int store_open(const char *dir) {
  char path[PATH_MAX];
  store_close();
  if (strlen(dir) >= sizeof g_dir - 32) return 0;
  strcpy(g_dir, dir);
  if (!make_dirs(g_dir) || !path_of(path, "objects") || !make_dirs(path)) return 0;
  if (!path_of(path, ".lock")) return 0;
  g_lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  return g_lock_fd >= 0;
}

void store_close(void) {
  if (g_lock_fd >= 0) close(g_lock_fd);
  g_lock_fd = -1;
}

static int lock(int how) {
  while (flock(g_lock_fd, how) != 0)
    if (errno != EINTR) return 0;
  return 1;
}

static void unlock(void) { flock(g_lock_fd, LOCK_UN); }

/* Writes `text` to dir/name through a temporary file and rename(2); mode 0600. */
static int write_file(const char *name, const char *text, size_t len) {
  char path[PATH_MAX], tmp[PATH_MAX + 32];
  if (!path_of(path, name)) return 0;
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return 0;
  size_t done = 0;
  while (done < len) {
    ssize_t n = write(fd, text + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += (size_t)n;
  }
  int ok = done == len && fsync(fd) == 0;
  ok = close(fd) == 0 && ok;
  if (ok && rename(tmp, path) == 0) return 1;
  unlink(tmp);
  return 0;
}

/* Reads a whole (small) file; NUL-terminated; the caller frees it. */
static char *read_file(const char *path) {
  FILE *f = fopen(path, "re");
  if (!f) return NULL;
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  while (buf) {
    size_t n = fread(buf + len, 1, cap - len - 1, f);
    len += n;
    if (n == 0) break;
    if (len + 1 == cap) {
      char *grown = cap < (16u << 20) ? realloc(buf, cap * 2) : NULL;
      if (!grown) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = grown;
      cap *= 2;
    }
  }
  if (buf) buf[len] = '\0';
  fclose(f);
  return buf;
}

/* ---- Hex text ---- */

/* A growing text buffer. */
struct text {
  char *s;
  size_t len, cap;
  int failed;
};

static void put(struct text *t, const char *s, size_t n) {
  if (t->failed) return;
  if (t->len + n + 1 > t->cap) {
    size_t cap = t->cap ? t->cap : 1024;
    while (t->len + n + 1 > cap) cap *= 2;
    char *grown = realloc(t->s, cap);
    if (!grown) {
      t->failed = 1;
      return;
    }
    t->s = grown;
    t->cap = cap;
  }
  memcpy(t->s + t->len, s, n);
  t->len += n;
  t->s[t->len] = '\0';
}

static void put_str(struct text *t, const char *s) { put(t, s, strlen(s)); }

static void put_hex(struct text *t, const unsigned char *v, size_t n) {
  static const char digits[] = "0123456789abcdef";
  if (n == 0) {
    put_str(t, "-");
    return;
  }
  for (size_t i = 0; i < n; i++) {
    char two[2] = {digits[v[i] >> 4], digits[v[i] & 15]};
    put(t, two, 2);
  }
}

static void text_free(struct text *t) {
  if (t->s) OPENSSL_clear_free(t->s, t->cap);
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes a hex word ("-" is empty) into a new buffer; returns 0 when malformed. */
static int from_hex(const char *word, unsigned char **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (strcmp(word, "-") == 0) return 1;
  size_t n = strlen(word);
  if (n == 0 || n % 2) return 0;
  unsigned char *v = malloc(n / 2);
  if (!v) return 0;
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hex_digit(word[2 * i]), lo = hex_digit(word[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      free(v);
      return 0;
    }
    v[i] = (unsigned char)(hi << 4 | lo);
  }
  *out = v;
  *out_len = n / 2;
  return 1;
}

/* Decodes into a fixed-size field; returns 0 unless the word has exactly `len` bytes. */
static int from_hex_fixed(const char *word, unsigned char *field, size_t len) {
  unsigned char *v;
  size_t n;
  if (!from_hex(word, &v, &n)) return 0;
  int ok = n == len;
  if (ok) memcpy(field, v, len);
  if (v) OPENSSL_clear_free(v, n);
  return ok;
}

/* ---- Token metadata: token.conf ---- */

#define META_MAGIC "SM2TOKEN-TOKEN 1"
#define OBJECT_MAGIC "SM2TOKEN-OBJECT 1"

static int meta_text(const struct token_meta *m, struct text *t) {
  put_str(t, META_MAGIC "\nlabel ");
  put_hex(t, m->label, sizeof m->label);
  put_str(t, "\nserial ");
  put_str(t, m->serial);
  put_str(t, "\n");
  if (m->so_pin_set) {
    put_str(t, "so ");
    put_hex(t, m->so_salt, PIN_SALT_LEN);
    put_str(t, " ");
    put_hex(t, m->so_hash, PIN_HASH_LEN);
    put_str(t, "\n");
  }
  if (m->user_pin_set) {
    put_str(t, "user ");
    put_hex(t, m->user_salt, PIN_SALT_LEN);
    put_str(t, " ");
    put_hex(t, m->user_hash, PIN_HASH_LEN);
    put_str(t, "\n");
  }
  return !t->failed;
}

static int parse_meta(char *s, struct token_meta *m) {
  char *save = NULL, *line = strtok_r(s, "\n", &save);
  if (!line || strcmp(line, META_MAGIC) != 0) return 0;
  memset(m, 0, sizeof *m);
  int have_label = 0;
  while ((line = strtok_r(NULL, "\n", &save))) {
    char key[16], a[80], b[80];
    int n = sscanf(line, "%15s %79s %79s", key, a, b);
    if (n >= 2 && strcmp(key, "label") == 0) {
      have_label = from_hex_fixed(a, m->label, sizeof m->label);
    } else if (n >= 2 && strcmp(key, "serial") == 0 && strlen(a) == 16) {
      memcpy(m->serial, a, 17);
    } else if (n == 3 && strcmp(key, "so") == 0) {
      m->so_pin_set = from_hex_fixed(a, m->so_salt, PIN_SALT_LEN) && from_hex_fixed(b, m->so_hash, PIN_HASH_LEN);
    } else if (n == 3 && strcmp(key, "user") == 0) {
      m->user_pin_set = from_hex_fixed(a, m->user_salt, PIN_SALT_LEN) && from_hex_fixed(b, m->user_hash, PIN_HASH_LEN);
    }
  }
  m->initialized = have_label && m->so_pin_set && m->serial[0];
  return m->initialized;
}

/* ---- Objects: objects/<id>.obj ---- */

static int object_text(const struct object *o, struct text *t) {
  char type[24];
  put_str(t, OBJECT_MAGIC "\n");
  for (size_t i = 0; i < o->count; i++) {
    snprintf(type, sizeof type, "%lx ", o->attrs[i].type);
    put_str(t, type);
    put_hex(t, o->attrs[i].value, o->attrs[i].len);
    put_str(t, "\n");
  }
  return !t->failed;
}

static struct object *parse_object(char *s) {
  char *save = NULL, *line = strtok_r(s, "\n", &save);
  if (!line || strcmp(line, OBJECT_MAGIC) != 0) return NULL;
  struct object *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  while ((line = strtok_r(NULL, "\n", &save))) {
    char *end, *value = strchr(line, ' ');
    if (!value) goto bad;
    *value++ = '\0';
    errno = 0;
    unsigned long type = strtoul(line, &end, 16);
    unsigned char *v;
    size_t n;
    if (errno || *end || !from_hex(value, &v, &n)) goto bad;
    int ok = obj_set(o, type, v, n);
    if (v) OPENSSL_clear_free(v, n);
    if (!ok) goto bad;
  }
  if (!obj_attr(o, CKA_CLASS)) goto bad;
  return o;
bad:
  obj_free(o);
  return NULL;
}

static int object_name(const char *file, char *out) {
  int n = snprintf(out, PATH_MAX, "objects/%s.obj", file);
  return n > 0 && n < PATH_MAX;
}

int store_load(struct token_meta *meta, struct object **objects) {
  char path[PATH_MAX];
  int ok = 0;
  *objects = NULL;
  memset(meta, 0, sizeof *meta);
  if (!lock(LOCK_SH)) return 0;
  if (!path_of(path, "token.conf")) goto done;
  char *text = read_file(path);
  if (!text && errno != ENOENT) goto done;
  if (text) {
    parse_meta(text, meta); /* a malformed file is an uninitialized token */
    OPENSSL_clear_free(text, strlen(text));
  }
  if (!path_of(path, "objects")) goto done;
  DIR *d = opendir(path);
  if (!d) goto done;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t n = strlen(e->d_name);
    char name[PATH_MAX], file[PATH_MAX];
    /* <16 hex digits>.obj; temporary files (.obj.tmp.<pid>) are skipped */
    if (n != 20 || strcmp(e->d_name + 16, ".obj") != 0) continue;
    snprintf(name, sizeof name, "objects/%s", e->d_name);
    if (!path_of(file, name) || !(text = read_file(file))) continue;
    struct object *o = parse_object(text);
    OPENSSL_clear_free(text, strlen(text));
    if (!o) continue;
    memcpy(o->file, e->d_name, 16);
    o->file[16] = '\0';
    o->next = *objects;
    *objects = o;
  }
  closedir(d);
  ok = 1;
done:
  unlock();
  return ok;
}

int store_save_meta(const struct token_meta *meta) {
  struct text t = {0};
  int ok = meta_text(meta, &t) && lock(LOCK_EX);
  if (ok) {
    ok = write_file("token.conf", t.s, t.len);
    unlock();
  }
  text_free(&t);
  return ok;
}

static int save_object(struct object *o) {
  char name[PATH_MAX];
  struct text t = {0};
  if (!o->file[0]) {
    unsigned char id[8];
    if (RAND_bytes(id, sizeof id) != 1) return 0;
    for (size_t i = 0; i < sizeof id; i++) snprintf(o->file + 2 * i, 3, "%02x", id[i]);
  }
  int ok = object_text(o, &t) && object_name(o->file, name) && write_file(name, t.s, t.len);
  text_free(&t);
  return ok;
}

static int delete_object(const struct object *o) {
  char name[PATH_MAX], path[PATH_MAX];
  if (!o->file[0]) return 1;
  if (!object_name(o->file, name) || !path_of(path, name)) return 0;
  return unlink(path) == 0 || errno == ENOENT;
}

int store_save_objects(struct object *a, struct object *b) {
  if (!lock(LOCK_EX)) return 0;
  int ok = save_object(a);
  if (ok && b && !(ok = save_object(b))) delete_object(a);
  unlock();
  return ok;
}

int store_delete_object(const struct object *o) {
  if (!lock(LOCK_EX)) return 0;
  int ok = delete_object(o);
  unlock();
  return ok;
}

int store_reset(const struct token_meta *meta) {
  char path[PATH_MAX], file[PATH_MAX];
  struct text t = {0};
  int ok = 0;
  if (!meta_text(meta, &t) || !lock(LOCK_EX)) goto done;
  if (path_of(path, "objects")) {
    DIR *d = opendir(path);
    struct dirent *e;
    ok = d != NULL;
    while (d && (e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      if (snprintf(file, sizeof file, "%s/%s", path, e->d_name) >= (int)sizeof file || unlink(file) != 0) ok = 0;
    }
    if (d) closedir(d);
  }
  ok = ok && write_file("token.conf", t.s, t.len);
  unlock();
done:
  text_free(&t);
  return ok;
}
