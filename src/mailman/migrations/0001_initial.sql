-- 0001_initial: users, newsletters, subscriptions, letters, the deliveries map and sent emails.
--
-- Applied by mailman.services.migrations in one transaction. Once released, never edit this file:
-- add 0002_... instead (the migrator refuses to run when an applied file's checksum changes).

CREATE TABLE users (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One newsletter per user (the UNIQUE on user_id).
CREATE TABLE newsletters (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                  bigint NOT NULL UNIQUE REFERENCES users,
    name                     text NOT NULL,
    from_address             text NOT NULL,
    reply_to                 text,
    -- e.g. 'https://example.com/unsubscribe/{token}'; {token} becomes the subscription's token.
    unsubscribe_url_template text NOT NULL
        CONSTRAINT newsletters_unsubscribe_url_has_token CHECK (strpos(unsubscribe_url_template, '{token}') > 0),
    created_at               timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subscriptions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    newsletter_id     bigint NOT NULL REFERENCES newsletters,
    email             text NOT NULL,
    name              text NOT NULL DEFAULT '',
    status            text NOT NULL DEFAULT 'active'
        CONSTRAINT subscriptions_status_check
        CHECK (status IN ('active', 'unsubscribed', 'bounced', 'complained')),
    status_reason     text,
    unsubscribe_token text NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', ''),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- An address subscribes once per newsletter, whatever its case.
CREATE UNIQUE INDEX subscriptions_newsletter_email_key ON subscriptions (newsletter_id, lower(email));
-- The unsubscribe link looks a subscription up by its token.
CREATE UNIQUE INDEX subscriptions_unsubscribe_token_key ON subscriptions (unsubscribe_token);
-- Fixing a letter's audience reads the active subscriptions of one newsletter.
CREATE INDEX subscriptions_active_idx ON subscriptions (newsletter_id, id) WHERE status = 'active';

CREATE TABLE letters (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    newsletter_id    bigint NOT NULL REFERENCES newsletters,
    subject          text NOT NULL,
    text_body        text NOT NULL,
    html_body        text,
    status           text NOT NULL DEFAULT 'draft'
        CONSTRAINT letters_status_check
        CHECK (status IN ('draft', 'scheduled', 'sending', 'paused', 'sent', 'cancelled', 'failed')),
    send_at          timestamptz,
    -- What recovery does with a recipient whose send started but was never recorded:
    -- 'resend' (at-least-once, same Message-ID) or 'hold' (at-most-once, reported uncertain).
    uncertain_policy text NOT NULL DEFAULT 'resend'
        CONSTRAINT letters_uncertain_policy_check CHECK (uncertain_policy IN ('resend', 'hold')),
    -- The summary of a send: audience size, restarts, failure reason, started/finished times.
    mail_order       jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT letters_mail_order_is_object CHECK (jsonb_typeof(mail_order) = 'object'),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT letters_scheduled_has_send_at CHECK (status <> 'scheduled' OR send_at IS NOT NULL)
);
CREATE INDEX letters_newsletter_id_idx ON letters (newsletter_id);
CREATE INDEX letters_due_idx ON letters (send_at) WHERE status = 'scheduled';
CREATE INDEX letters_sending_idx ON letters (id) WHERE status = 'sending';

-- The persisted deliveries map: one row per (letter, subscription) of the fixed audience.
-- Every state change touches a partial-index predicate, so updates are never HOT; fillfactor and
-- the per-table autovacuum settings keep the churn in check (see the job-queues reference, §5).
CREATE TABLE deliveries (
    letter_id       bigint REFERENCES letters ON DELETE CASCADE,
    subscription_id bigint REFERENCES subscriptions,
    state           text NOT NULL DEFAULT 'pending'
        CONSTRAINT deliveries_state_check
        CHECK (state IN ('pending', 'sending', 'delivered', 'failed', 'skipped', 'uncertain')),
    attempts        integer NOT NULL DEFAULT 0 CONSTRAINT deliveries_attempts_check CHECK (attempts >= 0),
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Fencing token of the current claim (from delivery_lease_token); an ack must present it.
    lease_token     bigint,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (letter_id, subscription_id)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
-- The claim: ORDER BY next_attempt_at, subscription_id among a letter's due pending rows.
CREATE INDEX deliveries_pending_idx ON deliveries (letter_id, next_attempt_at, subscription_id)
    WHERE state = 'pending';
-- No index on 'sending' rows: every claim and every ack would have to keep it up to date (about a
-- fifth of Postgres' work per message), while only recovery, which is rare, looks for such rows;
-- it finds them through the primary key's letter_id prefix.

CREATE SEQUENCE delivery_lease_token;

-- One row per message accepted by SMTP.
CREATE TABLE newsletter_emails (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    letter_id       bigint NOT NULL REFERENCES letters,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    message_id      text NOT NULL,
    smtp_reply      text,
    sent_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT newsletter_emails_letter_id_subscription_id_key UNIQUE (letter_id, subscription_id)
);
