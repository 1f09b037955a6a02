-- 0002_letter_leases: which daemon (node) drives each letter, until when, under which fencing token.
--
-- Several daemons may share one database (DESIGN.md section 5, guarantee 5: each letter is driven
-- by one node at a time; if that node dies, another takes the letter over and finishes it). A node
-- that sends a letter holds its lease:
--
--   owner_node        the node's name (the setting node_name), shown in the letter's status;
--   owner_token       a number from letter_lease_token, new whenever the letter changes hands: every
--                     claim of recipients presents it, so a node that lost the lease claims nobody;
--   lease_expires_at  by the database's clock (never a node's): the holder renews it every ttl/3.
--
-- Another node takes a letter over only once its lease has expired (its holder died, or lost the
-- database for longer than the ttl); a holder that stops cleanly (sent, paused, cancelled, shut
-- down) clears all three at once, so that another node may resume the letter at once.
-- The takeover scan reads the few letters 'sending' through letters_sending_idx: no new index.

ALTER TABLE letters
    ADD COLUMN owner_node       text,
    ADD COLUMN owner_token      bigint,
    ADD COLUMN lease_expires_at timestamptz,
    ADD CONSTRAINT letters_lease_all_or_nothing CHECK (
        (owner_node IS NULL) = (owner_token IS NULL)
        AND (owner_node IS NULL) = (lease_expires_at IS NULL)
    );

CREATE SEQUENCE letter_lease_token;
