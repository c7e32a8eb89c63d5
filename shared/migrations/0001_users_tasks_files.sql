-- Users, tasks and their files: the editable side of coderun.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('student', 'teacher', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
    id          uuid PRIMARY KEY,
    owner_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        text NOT NULL,
    language    text NOT NULL,
    description text NOT NULL DEFAULT '',
    -- Path of the main file; it always names an existing file while set.
    main_file   text COLLATE "C",
    -- Overrides the language's default command when set.
    command     text,
    -- Kept equal to the sum and count of task_files in the same transaction as every change.
    total_size  bigint NOT NULL DEFAULT 0 CHECK (total_size >= 0),
    file_count  integer NOT NULL DEFAULT 0 CHECK (file_count >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tasks_owner_updated ON tasks (owner_id, updated_at DESC, id);

-- Folders are implicit: a folder exists while a file lies below it. Paths use the C collation
-- so that `path >= 'a/' AND path < 'a0'` is an index range scan over a folder's contents.
CREATE TABLE task_files (
    task_id    uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    path       text COLLATE "C" NOT NULL,
    content    text NOT NULL,
    size       bigint NOT NULL CHECK (size >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, path)
);
