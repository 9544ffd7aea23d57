import { z } from 'zod';

/**
 * RAM-style policy documents, the shape operators already write in the cloud:
 * `{ "Version": "1", "Statement": [ { "Effect": "Allow" | "Deny", "Action": [...], "Resource": [...] } ] }`.
 * Actions are `kms:<Action>` / `yundun-cert:<Action>` (case-insensitive); resources are ARNs such as
 * `acs:kms:<region>:<account>:key/<KeyId>`; `*` and `?` are wildcards. An explicit Deny wins; otherwise an Allow
 * is needed.
 */
const oneOrMany = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).transform((v) => (Array.isArray(v) ? v : [v]));

export const PolicyDocumentSchema = z
  .object({
    Version: z.literal('1').default('1'),
    Statement: z
      .array(
        z
          .object({
            Effect: z.enum(['Allow', 'Deny']),
            Action: oneOrMany,
            Resource: oneOrMany,
          })
          .strict(),
      )
      .min(1),
  })
  .strict();
export type PolicyDocument = z.input<typeof PolicyDocumentSchema>;

function glob(pattern: string, flags: string): RegExp {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`, flags);
}

interface CompiledStatement {
  allow: boolean;
  actions: RegExp[];
  resources: RegExp[];
}

export class Policy {
  private readonly statements: CompiledStatement[];

  constructor(documents: ReadonlyArray<z.output<typeof PolicyDocumentSchema>>) {
    this.statements = documents.flatMap((d) =>
      d.Statement.map((s) => ({
        allow: s.Effect === 'Allow',
        actions: s.Action.map((a) => glob(a, 'i')),
        resources: s.Resource.map((r) => glob(r, '')),
      })),
    );
  }

  allows(action: string, resource: string): boolean {
    const matching = this.statements.filter((s) => s.actions.some((a) => a.test(action)) && s.resources.some((r) => r.test(resource)));
    return matching.length > 0 && matching.every((s) => s.allow);
  }
}
