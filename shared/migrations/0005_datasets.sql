-- Datasets coderun owns: a dataset, its draft (files being uploaded), its immutable published
-- versions (v1, v2, …) with their files, multipart uploads under way, and object prefixes that
-- wait to be removed from the bucket. Objects: a draft file at `datasets/{name}/.draft/{uuid}`,
-- a published file at `datasets/{name}/v{N}/{path}`.

CREATE TABLE datasets (
    id          uuid PRIMARY KEY,
    -- A safe folder name, unique; mounted at $DATA_DIR/{name}.
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    title       text NOT NULL,
    description text NOT NULL DEFAULT '',
    -- Where the data comes from and under which licence it may be used.
    source      text NOT NULL DEFAULT '',
    -- The number the next published version gets: never reused, so `name@vN` names one
    -- content for ever, even after vN is deleted.
    next_version integer NOT NULL DEFAULT 1,
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The draft: what the next published version will hold. Publishing copies it; it stays as the
-- start of the version after.
CREATE TABLE dataset_draft_files (
    dataset_id uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    path       text NOT NULL,
    object_key text NOT NULL,
    size       bigint NOT NULL CHECK (size >= 0),
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset_id, path)
);

CREATE TABLE dataset_versions (
    id           uuid PRIMARY KEY,
    dataset_id   uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    version      integer NOT NULL CHECK (version >= 1),
    size         bigint NOT NULL CHECK (size >= 0),
    file_count   integer NOT NULL CHECK (file_count >= 0),
    -- sha256 of the version's manifest (every `sha256  path` line, sorted by path): what a
    -- worker's cache keys the version by.
    checksum     text NOT NULL,
    published_by uuid REFERENCES users (id) ON DELETE SET NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dataset_id, version)
);

CREATE TABLE dataset_files (
    version_id uuid NOT NULL REFERENCES dataset_versions (id) ON DELETE CASCADE,
    path       text NOT NULL,
    size       bigint NOT NULL CHECK (size >= 0),
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (version_id, path)
);

-- Multipart uploads a client is sending straight to S3 through presigned part URLs.
CREATE TABLE dataset_uploads (
    id           uuid PRIMARY KEY,
    dataset_id   uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    path         text NOT NULL,
    size         bigint NOT NULL CHECK (size >= 0),
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    object_key   text NOT NULL,
    s3_upload_id text NOT NULL,
    part_bytes   bigint NOT NULL,
    created_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dataset_uploads_created ON dataset_uploads (created_at);

-- Objects to remove in the background: a deleted dataset's or version's prefix, a replaced
-- draft file, an abandoned upload (with its S3 upload id, aborted first).
CREATE TABLE dataset_sweeps (
    id           bigserial PRIMARY KEY,
    prefix       text NOT NULL,
    s3_upload_id text,
    attempts     integer NOT NULL DEFAULT 0,
    not_before   timestamptz NOT NULL DEFAULT now(),
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dataset_sweeps_due ON dataset_sweeps (not_before);

-- Runs name their datasets as `name@vN`; deleting one asks which active runs use it.
CREATE INDEX runs_active_datasets ON runs USING gin (datasets)
    WHERE status IN ('queued', 'dispatched', 'pending', 'running', 'stopping');
