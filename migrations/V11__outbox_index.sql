-- V11: the outbox read a page at a time. Sending walks the pending
-- outgoing messages after a row id, in row id order, once per router a
-- profile writes to (home routers, V10). Without this index SQLite read
-- every pending message and sorted them for each page, so a long outbox
-- went out slower the longer it was. Partial: incoming messages, most of
-- a profile, cost it nothing.
CREATE INDEX messages_outbox ON messages (status, id) WHERE direction = 'out';
