-- Subjects end with the publishing role (the NATS server lets only that role publish them):
-- messages the gateway queued before this change are relayed under its role.
UPDATE outbox SET subject = subject || '.api'
 WHERE published_at IS NULL AND subject NOT LIKE '%.api';
