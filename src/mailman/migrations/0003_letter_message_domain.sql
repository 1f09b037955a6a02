-- 0003_letter_message_domain: the right-hand side of a letter's Message-IDs, the letter's own;
-- and an index for the takeover of letters whose holder died while they were paused or cancelled.
--
-- A receiver drops a repeated message only if it carries the same Message-ID as the first copy.
-- The domain used to come from the settings of the node sending the letter: a takeover by a daemon
-- configured otherwise, or a restart after the setting changed, resent with another Message-ID. It
-- is now fixed once per letter (when the daemon creates it, or when its sending first starts) and
-- every node, after any change of settings, builds the letter's Message-IDs from this column.
-- NULL only for a letter that no node has started sending yet.

ALTER TABLE letters
    ADD COLUMN message_domain text
        CONSTRAINT letters_message_domain_not_empty CHECK (message_domain <> '');

-- The takeover scan also looks for paused and cancelled letters whose holder died before it could
-- release them (their rows left 'sending' wait for recovery): the few letters held by any node.
CREATE INDEX letters_leased_idx ON letters (id) WHERE owner_token IS NOT NULL;
