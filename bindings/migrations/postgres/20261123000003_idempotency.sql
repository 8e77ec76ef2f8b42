-- An app's Idempotency-Key names one bind of its tenant: a retried request finds the code the
-- first one bound instead of binding a second.
ALTER TABLE bindings ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX bindings_idempotency ON bindings (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
