/*
 * sm2token.h: the token's internal model (objects as attribute lists, token metadata) and the file store.
 * Not part of any public interface; every function here is called with the module lock held.
 */
#ifndef SM2TOKEN_INTERNAL_H
#define SM2TOKEN_INTERNAL_H

#include <stddef.h>

#include "pkcs11-min.h"

struct attr {
  CK_ATTRIBUTE_TYPE type;
  CK_ULONG len;
  unsigned char *value; /* NULL when len == 0 */
};

struct object {
  struct object *next;
  CK_OBJECT_HANDLE handle;
  CK_SESSION_HANDLE session; /* the owning session of a session object; 0 for a token object */
  char file[24];             /* the store's file id of a token object ("" until saved) */
  size_t count, capacity;
  struct attr *attrs;
};

#define PIN_SALT_LEN 16
#define PIN_HASH_LEN 32

struct token_meta {
  int initialized;
  unsigned char label[32]; /* blank-padded */
  char serial[17];         /* 16 hex digits */
  int so_pin_set, user_pin_set;
  unsigned char so_salt[PIN_SALT_LEN], so_hash[PIN_HASH_LEN];
  unsigned char user_salt[PIN_SALT_LEN], user_hash[PIN_HASH_LEN];
};

/* Attribute lists */
struct attr *obj_attr(const struct object *o, CK_ATTRIBUTE_TYPE type);
int obj_set(struct object *o, CK_ATTRIBUTE_TYPE type, const void *value, CK_ULONG len); /* 1 ok, 0 no memory */
void obj_free(struct object *o);                                                       /* wipes the values */

/*
 * The file store under $SM2TOKEN_DIR:
 *   token.conf          the token's label, serial and PIN hashes (salted SHA-256)
 *   objects/<id>.obj    one file per token object: every attribute, hex-encoded
 *   .lock               flock(2): exclusive around every write, shared around a load
 * Files are written to a temporary name and renamed, so a reader never sees half a file.
 * All return 1 on success, 0 on failure.
 */
int store_open(const char *dir);
void store_close(void);
/* Loads the metadata and every token object; the objects get no handle (the caller assigns them). */
int store_load(struct token_meta *meta, struct object **objects);
int store_save_meta(const struct token_meta *meta);
/* Writes one or two objects (a key pair) under one lock; assigns o->file when empty. */
int store_save_objects(struct object *a, struct object *b);
int store_delete_object(const struct object *o);
/* Deletes every object file and writes meta, under one lock (C_InitToken). */
int store_reset(const struct token_meta *meta);

#endif /* SM2TOKEN_INTERNAL_H */
