-- symbiote projections, version 1.
-- Applied with search_path = <target schema>, public (the vector type lives in public).
-- Every row is a pure function of the stream: nothing here defaults to now() or random().

CREATE TABLE projection_checkpoints (
    name        text PRIMARY KEY,
    last_seq    bigint NOT NULL DEFAULT 0,   -- last stream sequence folded into every table below
    events      bigint NOT NULL DEFAULT 0    -- messages folded so far
);

-- every message of the stream, decoded and verified at its position
CREATE TABLE events (
    seq         bigint PRIMARY KEY,
    subject     text NOT NULL,
    event_id    text,               -- NULL when the message cannot be read
    type        text,
    at          bigint,
    actor       text,
    corr        text,
    cause       text,
    command_id  text,               -- for sym.cmd.<id>.* subjects
    body        jsonb,              -- bytes as hex strings
    signers     text[] NOT NULL,    -- principals whose signatures verified at this position
    problem     text,               -- NULL when decoded, verified and well-formed
    raw_sha256  bytea NOT NULL      -- SHA-256 of the stored bytes
);
CREATE INDEX events_command_id ON events (command_id) WHERE command_id IS NOT NULL;
CREATE INDEX events_corr ON events (corr) WHERE corr IS NOT NULL;

-- current state of each command (one row per command id that has a proposal or an ending)
CREATE TABLE commands (
    command_id        text PRIMARY KEY,
    state             text NOT NULL,  -- proposed | awaiting_approval | started | succeeded | failed | denied
    command           text,
    args              jsonb,
    confidence        double precision,
    agent             text,
    corr              text,
    input_id          text,
    proposal_seq      bigint,
    proposed_at       bigint,
    proposal_problem  text,
    approval_mode     text,
    quorum            integer,
    requested_seq     bigint,
    approval_expires_at bigint,
    approvals         jsonb NOT NULL,  -- [{principal, seq, at}] counted approvals
    rejected_by       text,
    denial_reason     text,
    denial_detail     text,
    started_seq       bigint,
    starts            integer NOT NULL,
    terminal_seq      bigint,
    exit_code         integer,
    duration_ms       bigint,
    output            jsonb,
    last_seq          bigint NOT NULL,
    updated_at        bigint,
    timeline          jsonb NOT NULL   -- [{seq, type, at, actor, event_id, note}]
);
CREATE INDEX commands_state ON commands (state);
CREATE INDEX commands_last_seq ON commands (last_seq);

-- every approval or rejection event, with whether it counted and why not
CREATE TABLE approvals (
    seq         bigint PRIMARY KEY,
    command_id  text NOT NULL,
    event_id    text NOT NULL,
    principal   text NOT NULL,    -- the event's actor
    decision    text NOT NULL,    -- approve | reject
    at          bigint NOT NULL,
    signers     text[] NOT NULL,
    counted     boolean NOT NULL,
    reason      text,             -- NULL when counted
    detail      text
);
CREATE INDEX approvals_command_id ON approvals (command_id);

-- the key registry as folded so far
CREATE TABLE keys (
    kid             text PRIMARY KEY,
    principal       text NOT NULL,
    role            text NOT NULL,
    registered_seq  bigint NOT NULL,
    revoked_seq     bigint
);

-- command definitions (with the policy in force) as of the latest folded position
CREATE TABLE registry (
    name            text PRIMARY KEY,
    defined_seq     bigint NOT NULL,
    policy_seq      bigint,           -- a policy.set that overrides the definition's approval
    executor        text NOT NULL,
    approval_mode   text NOT NULL,
    quorum          integer NOT NULL,
    description     text NOT NULL,
    definition      jsonb NOT NULL
);

-- texts of verified inputs and command outcomes, for recall
CREATE TABLE memory (
    seq         bigint PRIMARY KEY,
    kind        text NOT NULL,        -- input | outcome
    event_id    text NOT NULL,
    command_id  text,
    actor       text NOT NULL,
    corr        text,
    at          bigint NOT NULL,
    text        text NOT NULL,
    embedding   vector(256) NOT NULL
);
CREATE INDEX memory_embedding_hnsw ON memory USING hnsw (embedding vector_cosine_ops);

-- signed audit checkpoints, copied here by the checkpointer (not a projection of the stream)
CREATE TABLE audit_checkpoints (
    seq         bigint PRIMARY KEY,   -- stream sequence of the audit.checkpoint event
    event_id    text NOT NULL,
    first_seq   bigint NOT NULL,
    last_seq    bigint NOT NULL,
    count       bigint NOT NULL,
    root        bytea NOT NULL,
    prev        bytea,
    at          bigint NOT NULL,
    kid         text NOT NULL,
    wire        bytea NOT NULL
);
