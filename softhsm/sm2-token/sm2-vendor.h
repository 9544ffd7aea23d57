/*
 * sm2-vendor.h: the vendor-defined PKCS#11 constants of the SM2 test token (documented in README.md).
 * They emulate the way Chinese HSMs expose SM2 outside the standard (which, in v2.40, has no SM2): a vendor key
 * type and vendor mechanisms. The gateway must know these numbers; the TypeScript side mirrors them in
 * test/helpers/sm2-token.ts.
 */
#ifndef SM2TOKEN_SM2_VENDOR_H
#define SM2TOKEN_SM2_VENDOR_H

#include "pkcs11-min.h"

/* CKA_KEY_TYPE of both halves of an SM2 key pair. 0x80001001 */
#define CKK_VENDOR_SM2 (CKK_VENDOR_DEFINED + 0x1001UL)

/* Key-pair generation on the SM2 curve (GB/T 32918.5 parameters). No mechanism parameter. 0x80001001 */
#define CKM_VENDOR_SM2_KEY_PAIR_GEN (CKM_VENDOR_DEFINED + 0x1001UL)

/*
 * Sign / verify over e, computed by the caller: e = SM3(Z_A || M), exactly 32 bytes (GB/T 32918.2 §6.1 A1-A2).
 * The signature is r || s, 64 bytes, each big-endian and left-padded with zeros to 32 bytes. 0x80001002
 */
#define CKM_VENDOR_SM2_SIGN_E (CKM_VENDOR_DEFINED + 0x1002UL)

/* The same as CKM_VENDOR_SM2_SIGN_E, but the signature is DER: SEQUENCE { r INTEGER, s INTEGER } (<= 72 bytes). 0x80001003 */
#define CKM_VENDOR_SM2_SIGN_E_DER (CKM_VENDOR_DEFINED + 0x1003UL)

/* CKA_EC_PARAMS of an SM2 key: DER OBJECT IDENTIFIER 1.2.156.10197.1.301 (the SM2 curve). */
#define SM2_EC_PARAMS_DER "\x06\x08\x2a\x81\x1c\xcf\x55\x01\x82\x2d"
#define SM2_EC_PARAMS_DER_LEN 10

#endif /* SM2TOKEN_SM2_VENDOR_H */
