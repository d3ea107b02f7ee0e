-- Which queued call a rendition is waiting for, and how many calls in a row were refused
-- before reaching the handler.
--
-- The queue-worker reports every call's outcome to split's callback route, with the call's
-- X-Call-Id. split chooses that id when it dispatches (the gateway keeps an X-Call-Id it is
-- given), so a report can be matched to the dispatch it is about: a refusal (HTTP 429, 500
-- "Can't reach service", 502, 503...) of the *current* call counts, a late report of a call
-- that was superseded changes nothing. Refusals have their own budget (a function that stays
-- down must end in a dead letter, not in re-dispatches forever); a call that starts resets it.
ALTER TABLE renditions ADD COLUMN dispatch_call_id text;
ALTER TABLE renditions ADD COLUMN refusals integer NOT NULL DEFAULT 0 CHECK (refusals >= 0);
