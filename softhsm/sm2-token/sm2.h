/*
 * sm2.h: SM2 digital signature over a caller-supplied e (GB/T 32918.2-2016), on the SM2 curve
 * (GB/T 32918.5, OpenSSL NID_sm2). Keys and values are fixed-size big-endian byte strings.
 * Every function is thread-safe (no shared state).
 */
#ifndef SM2TOKEN_SM2_H
#define SM2TOKEN_SM2_H

#include <stddef.h>

#define SM2_SCALAR_LEN 32
#define SM2_POINT_LEN 65 /* 04 || x || y */
#define SM2_SIG_LEN 64   /* r || s */
#define SM2_DER_SIG_MAX 72

/* New key pair: d in [1, n-2], pub = [d]G uncompressed. Returns 1 on success, 0 on failure. */
int sm2_generate(unsigned char d[SM2_SCALAR_LEN], unsigned char pub[SM2_POINT_LEN]);

/* Signs e (GB/T 32918.2 §6.1 steps A3-A7) with d; writes r || s. Returns 1 on success, 0 on failure. */
int sm2_sign_e(const unsigned char d[SM2_SCALAR_LEN], const unsigned char e[32], unsigned char rs[SM2_SIG_LEN]);

/* Verifies r || s over e with pub (§7.1 steps B1-B7). Returns 1 valid, 0 invalid, -1 error (bad key, memory). */
int sm2_verify_e(const unsigned char pub[SM2_POINT_LEN], const unsigned char e[32], const unsigned char rs[SM2_SIG_LEN]);

/* Is pub (04 || x || y) a point of the curve, other than the point at infinity? 1 yes, 0 no. */
int sm2_point_valid(const unsigned char pub[SM2_POINT_LEN]);

/* r || s -> DER SEQUENCE { r INTEGER, s INTEGER }. out has SM2_DER_SIG_MAX bytes. Returns the length, 0 on failure. */
size_t sm2_rs_to_der(const unsigned char rs[SM2_SIG_LEN], unsigned char out[SM2_DER_SIG_MAX]);

/* DER -> r || s; only canonical DER with r, s < 2^256 is accepted. Returns 1 on success, 0 when malformed. */
int sm2_der_to_rs(const unsigned char *der, size_t len, unsigned char rs[SM2_SIG_LEN]);

#endif /* SM2TOKEN_SM2_H */
