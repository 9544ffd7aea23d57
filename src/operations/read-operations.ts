import { casListCert } from './cas-list-cert.js';
import type { Operation } from './context.js';
import { describeKeyVersion } from './describe-key-version.js';
import { describeKey } from './describe-key.js';
import { listAliasesByKeyId } from './list-aliases-by-key-id.js';
import { listAliases } from './list-aliases.js';
import { listKeyVersions } from './list-key-versions.js';
import { listKeys } from './list-keys.js';

/** The KMS 2016-01-20 read ("discovery") actions, to spread into the '2016-01-20' entry of OPERATIONS. */
export const KMS_READ_OPERATIONS: Record<string, Operation> = {
  DescribeKey: describeKey,
  ListKeys: listKeys,
  ListKeyVersions: listKeyVersions,
  DescribeKeyVersion: describeKeyVersion,
  ListAliases: listAliases,
  ListAliasesByKeyId: listAliasesByKeyId,
};

/** The CAS 2020-04-07 read actions, to spread into the '2020-04-07' entry of OPERATIONS. */
export const CAS_READ_OPERATIONS: Record<string, Operation> = {
  ListCert: casListCert,
};
