/*
 * sm2.c: SM2 signatures over a given e, with OpenSSL 3 BIGNUM / EC_POINT on the SM2 curve.
 *
 * OpenSSL's EVP SM2 signer takes the MESSAGE and computes Z_A and e itself; an HSM mechanism that receives e
 * (as the vendor "SM2 sign e" mechanisms do) has to run the GB/T 32918.2-2016 steps directly. This is the only
 * hand-written cryptography of the test token and it is for TESTS: it follows the standard step by step and
 * uses OpenSSL's constant-time primitives where they exist (BN_FLG_CONSTTIME on secrets, the Montgomery-ladder
 * scalar multiplication OpenSSL uses for [k]G), but it has had no side-channel review.
 */
#include "sm2.h"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/obj_mac.h>
#include <string.h>

/* Everything one operation needs; freed by ctx_free. */
struct sm2_ctx {
  EC_GROUP *group;
  BN_CTX *bn;
  const BIGNUM *n; /* the order of G */
};

static int ctx_new(struct sm2_ctx *c) {
  memset(c, 0, sizeof *c);
  /* A group per operation: no shared OpenSSL object between the threads that sign in parallel. */
  c->group = EC_GROUP_new_by_curve_name(NID_sm2);
  c->bn = BN_CTX_secure_new();
  if (c->bn) BN_CTX_start(c->bn);
  if (!c->group || !c->bn) return 0;
  c->n = EC_GROUP_get0_order(c->group);
  return c->n != NULL;
}

static void ctx_free(struct sm2_ctx *c) {
  if (c->bn) {
    BN_CTX_end(c->bn);
    BN_CTX_free(c->bn);
  }
  EC_GROUP_free(c->group);
}

/* A secret BIGNUM from the (secure) context, constant-time flag set; cleared when the context is freed. */
static BIGNUM *secret(struct sm2_ctx *c) {
  BIGNUM *b = BN_CTX_get(c->bn);
  if (b) BN_set_flags(b, BN_FLG_CONSTTIME);
  return b;
}

int sm2_generate(unsigned char d_out[SM2_SCALAR_LEN], unsigned char pub_out[SM2_POINT_LEN]) {
  struct sm2_ctx c;
  EC_POINT *p = NULL;
  int ok = 0;
  if (!ctx_new(&c)) goto done;
  BIGNUM *d = secret(&c), *n_minus_1 = BN_CTX_get(c.bn);
  p = EC_POINT_new(c.group);
  if (!d || !n_minus_1 || !p) goto done;
  /* GB/T 32918.1 §6.1: d is a random integer in [1, n-2]. BN_priv_rand_range(n-1) gives [0, n-2]; skip 0. */
  if (!BN_copy(n_minus_1, c.n) || !BN_sub_word(n_minus_1, 1)) goto done;
  do {
    if (!BN_priv_rand_range(d, n_minus_1)) goto done;
  } while (BN_is_zero(d));
  /* P = [d]G */
  if (!EC_POINT_mul(c.group, p, d, NULL, NULL, c.bn)) goto done;
  if (BN_bn2binpad(d, d_out, SM2_SCALAR_LEN) != SM2_SCALAR_LEN) goto done;
  if (EC_POINT_point2oct(c.group, p, POINT_CONVERSION_UNCOMPRESSED, pub_out, SM2_POINT_LEN, c.bn) != SM2_POINT_LEN)
    goto done;
  ok = 1;
done:
  EC_POINT_free(p);
  ctx_free(&c);
  return ok;
}

int sm2_sign_e(const unsigned char d_in[SM2_SCALAR_LEN], const unsigned char e_in[32], unsigned char rs[SM2_SIG_LEN]) {
  struct sm2_ctx c;
  EC_POINT *kg = NULL;
  BIGNUM *inv = NULL;
  int ok = 0;
  if (!ctx_new(&c)) goto done;
  BIGNUM *d = secret(&c), *k = secret(&c), *t = secret(&c), *u = secret(&c);
  BIGNUM *e = BN_CTX_get(c.bn), *x1 = BN_CTX_get(c.bn), *r = BN_CTX_get(c.bn), *s = BN_CTX_get(c.bn);
  kg = EC_POINT_new(c.group);
  if (!u || !s || !kg) goto done;
  if (!BN_bin2bn(d_in, SM2_SCALAR_LEN, d) || !BN_bin2bn(e_in, 32, e)) goto done;
  /* A valid private key is in [1, n-2] (so that 1 + d is invertible mod n). */
  if (BN_is_zero(d) || !BN_sub(t, c.n, BN_value_one()) || BN_cmp(d, t) >= 0) goto done;
  /* (1 + d)^-1 mod n, the same for every attempt below; BN_mod_inverse takes its constant-time path. */
  if (!BN_add(t, d, BN_value_one()) || !(inv = BN_mod_inverse(NULL, t, c.n, c.bn))) goto done;
  BN_set_flags(inv, BN_FLG_CONSTTIME);
  /* A1-A2 (M' = Z_A || M, e = SM3(M')) were done by the caller: e_in is e. */
  for (;;) {
    /* A3: k random in [1, n-1]. */
    do {
      if (!BN_priv_rand_range(k, c.n)) goto done;
    } while (BN_is_zero(k));
    /* A4: (x1, y1) = [k]G. */
    if (!EC_POINT_mul(c.group, kg, k, NULL, NULL, c.bn)) goto done;
    if (!EC_POINT_get_affine_coordinates(c.group, kg, x1, NULL, c.bn)) goto done;
    /* A5: r = (e + x1) mod n; back to A3 if r = 0 or r + k = n. */
    if (!BN_mod_add(r, e, x1, c.n, c.bn)) goto done;
    if (BN_is_zero(r)) continue;
    if (!BN_add(t, r, k)) goto done;
    if (BN_cmp(t, c.n) == 0) continue;
    /* A6: s = ((1 + d)^-1 * (k - r*d)) mod n; back to A3 if s = 0. */
    if (!BN_mod_mul(t, r, d, c.n, c.bn)) goto done;
    if (!BN_mod_sub(u, k, t, c.n, c.bn)) goto done;
    if (!BN_mod_mul(s, inv, u, c.n, c.bn)) goto done;
    if (BN_is_zero(s)) continue;
    break;
  }
  /* A7: the signature is (r, s); each as 32 big-endian bytes. */
  if (BN_bn2binpad(r, rs, 32) != 32 || BN_bn2binpad(s, rs + 32, 32) != 32) goto done;
  ok = 1;
done:
  BN_clear_free(inv);
  EC_POINT_free(kg);
  ctx_free(&c);
  return ok;
}

int sm2_verify_e(const unsigned char pub[SM2_POINT_LEN], const unsigned char e_in[32], const unsigned char rs[SM2_SIG_LEN]) {
  struct sm2_ctx c;
  EC_POINT *p = NULL, *x = NULL;
  int result = -1;
  if (!ctx_new(&c)) goto done;
  BIGNUM *r = BN_CTX_get(c.bn), *s = BN_CTX_get(c.bn), *e = BN_CTX_get(c.bn), *t = BN_CTX_get(c.bn);
  BIGNUM *x1 = BN_CTX_get(c.bn), *big_r = BN_CTX_get(c.bn);
  p = EC_POINT_new(c.group);
  x = EC_POINT_new(c.group);
  if (!big_r || !p || !x) goto done;
  /* The public key: a point on the curve (EC_POINT_oct2point checks that), not the point at infinity. */
  if (!EC_POINT_oct2point(c.group, p, pub, SM2_POINT_LEN, c.bn) || EC_POINT_is_at_infinity(c.group, p)) goto done;
  if (!BN_bin2bn(rs, 32, r) || !BN_bin2bn(rs + 32, 32, s) || !BN_bin2bn(e_in, 32, e)) goto done;
  result = 0;
  /* B1: r' in [1, n-1]; B2: s' in [1, n-1]. */
  if (BN_is_zero(r) || BN_cmp(r, c.n) >= 0 || BN_is_zero(s) || BN_cmp(s, c.n) >= 0) goto done;
  /* B3-B4: e' is given. B5: t = (r' + s') mod n; invalid if t = 0. */
  result = -1;
  if (!BN_mod_add(t, r, s, c.n, c.bn)) goto done;
  result = 0;
  if (BN_is_zero(t)) goto done;
  /* B6: (x1', y1') = [s']G + [t]P_A. */
  result = -1;
  if (!EC_POINT_mul(c.group, x, s, p, t, c.bn)) goto done;
  result = 0;
  if (EC_POINT_is_at_infinity(c.group, x)) goto done;
  result = -1;
  if (!EC_POINT_get_affine_coordinates(c.group, x, x1, NULL, c.bn)) goto done;
  /* B7: R = (e' + x1') mod n; valid if R = r'. */
  if (!BN_mod_add(big_r, e, x1, c.n, c.bn)) goto done;
  result = BN_cmp(big_r, r) == 0 ? 1 : 0;
done:
  EC_POINT_free(p);
  EC_POINT_free(x);
  ctx_free(&c);
  return result;
}

int sm2_point_valid(const unsigned char pub[SM2_POINT_LEN]) {
  struct sm2_ctx c;
  EC_POINT *p = NULL;
  int ok = 0;
  if (ctx_new(&c) && (p = EC_POINT_new(c.group)))
    ok = EC_POINT_oct2point(c.group, p, pub, SM2_POINT_LEN, c.bn) && !EC_POINT_is_at_infinity(c.group, p);
  EC_POINT_free(p);
  ctx_free(&c);
  return ok;
}

size_t sm2_rs_to_der(const unsigned char rs[SM2_SIG_LEN], unsigned char out[SM2_DER_SIG_MAX]) {
  ECDSA_SIG *sig = ECDSA_SIG_new(); /* the same ASN.1 as SM2: SEQUENCE { r INTEGER, s INTEGER } */
  BIGNUM *r = BN_bin2bn(rs, 32, NULL), *s = BN_bin2bn(rs + 32, 32, NULL);
  size_t len = 0;
  if (sig && r && s && ECDSA_SIG_set0(sig, r, s)) {
    r = s = NULL; /* owned by sig now */
    int needed = i2d_ECDSA_SIG(sig, NULL);
    if (needed > 0 && needed <= SM2_DER_SIG_MAX) {
      unsigned char *p = out;
      len = (size_t)i2d_ECDSA_SIG(sig, &p);
    }
  }
  BN_free(r);
  BN_free(s);
  ECDSA_SIG_free(sig);
  return len;
}

int sm2_der_to_rs(const unsigned char *der, size_t len, unsigned char rs[SM2_SIG_LEN]) {
  const unsigned char *p = der;
  unsigned char again[SM2_DER_SIG_MAX];
  int ok = 0;
  if (len > SM2_DER_SIG_MAX) return 0;
  ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
  if (!sig || p != der + len) goto done; /* trailing bytes */
  const BIGNUM *r, *s;
  ECDSA_SIG_get0(sig, &r, &s);
  if (BN_is_negative(r) || BN_is_negative(s) || BN_num_bytes(r) > 32 || BN_num_bytes(s) > 32) goto done;
  if (BN_bn2binpad(r, rs, 32) != 32 || BN_bn2binpad(s, rs + 32, 32) != 32) goto done;
  /* Canonical DER only: re-encoding must give the same bytes. */
  if (sm2_rs_to_der(rs, again) != len || memcmp(again, der, len) != 0) goto done;
  ok = 1;
done:
  ECDSA_SIG_free(sig);
  return ok;
}
