//! A task's files: reading, the tree view, and every change (save, delete, batch, move).
//!
//! Each change runs in one transaction that first locks the task row, so changes to one task
//! are serialised. The rules are checked on an in-memory [`FileSet`] of the task's paths and
//! sizes (no contents), and only a change that passes them all is written: a refused request
//! stores nothing.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::config::LimitSettings;
use crate::domain::FilePath;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("task not found")]
    TaskNotFound,
    #[error("no file or folder `{0}` in this task")]
    NotFound(String),
    #[error("`{0}` is a folder; a file and a folder cannot share a path")]
    IsFolder(String),
    #[error("`{0}` is a file, so nothing can be stored below it")]
    UnderFile(String),
    #[error("`{0}` already exists")]
    Exists(String),
    #[error("`{from}` cannot move into itself (`{to}`)")]
    MoveIntoItself { from: String, to: String },
    #[error("`{0}` is the task's main file; choose another main file before deleting it")]
    DeletesMainFile(String),
    #[error("a task holds at most {max} files")]
    TooManyFiles { max: u32 },
    #[error("a task holds at most {max} bytes")]
    TaskTooLarge { max: u64 },
    #[error("`{0}` is named twice in one request")]
    Duplicate(String),
    #[error(
        "`{path}` differs only by case or Unicode normalisation from `{existing}`, which this \
         task already has"
    )]
    NameClash { path: String, existing: String },
    #[error("the move would make `{path}`, which is not a valid path: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The paths and sizes of a task's files, and its main file: enough to check every rule.
#[derive(Debug, Clone, Default)]
pub struct FileSet {
    files: BTreeMap<String, i64>,
    main: Option<String>,
    /// Every file and folder path by its folded form ([`FilePath::fold`]), with the path as
    /// stored and how many files it covers: what finds a new path that would be the same
    /// file on a system ignoring case or normalisation.
    folded: HashMap<String, (String, usize)>,
}

/// Each prefix of `path` that names a folder or the file itself (`a`, `a/b`, `a/b/c.txt`),
/// with its folded form.
fn prefixes(path: &str) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    let mut folded = String::new();
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            folded.push('/');
        }
        folded.push_str(&FilePath::fold(segment));
        let end = path
            .match_indices('/')
            .nth(i)
            .map_or(path.len(), |(at, _)| at);
        out.push((&path[..end], folded.clone()));
    }
    out
}

/// What a move did: each file's old and new path.
pub type Renames = Vec<(String, String)>;

impl FileSet {
    pub fn new(files: impl IntoIterator<Item = (String, i64)>, main: Option<String>) -> Self {
        let mut set = Self {
            files: files.into_iter().collect(),
            main,
            folded: HashMap::new(),
        };
        let paths: Vec<String> = set.files.keys().cloned().collect();
        for path in &paths {
            set.index_add(path);
        }
        set
    }

    fn index_add(&mut self, path: &str) {
        for (prefix, folded) in prefixes(path) {
            self.folded
                .entry(folded)
                .or_insert_with(|| (prefix.to_owned(), 0))
                .1 += 1;
        }
    }

    fn index_remove(&mut self, path: &str) {
        for (_, folded) in prefixes(path) {
            if let Some(entry) = self.folded.get_mut(&folded) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.folded.remove(&folded);
                }
            }
        }
    }

    /// Refuses `path` when it, or one of its folders, folds to a path stored differently.
    fn check_fold(&self, path: &str) -> Result<(), Error> {
        for (prefix, folded) in prefixes(path) {
            if let Some((existing, _)) = self.folded.get(&folded)
                && existing != prefix
            {
                return Err(Error::NameClash {
                    path: prefix.to_owned(),
                    existing: existing.clone(),
                });
            }
        }
        Ok(())
    }

    fn insert(&mut self, path: String, size: i64) {
        self.index_add(&path);
        self.files.insert(path, size);
    }

    fn remove(&mut self, path: &str) -> Option<i64> {
        let size = self.files.remove(path)?;
        self.index_remove(path);
        Some(size)
    }

    pub fn main(&self) -> Option<&str> {
        self.main.as_deref()
    }

    pub fn total_size(&self) -> i64 {
        self.files.values().sum()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn below<'a>(&'a self, folder: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        let prefix = format!("{folder}/");
        self.files
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k)
            .take_while(move |k| k.starts_with(&prefix))
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn is_folder(&self, path: &str) -> bool {
        self.below(path).next().is_some()
    }

    /// Checks that `path` can hold a file: it is no folder and no ancestor is a file.
    fn check_file_slot(&self, path: &FilePath) -> Result<(), Error> {
        if self.is_folder(path.as_str()) {
            return Err(Error::IsFolder(path.to_string()));
        }
        if let Some(ancestor) = path
            .ancestors()
            .into_iter()
            .find(|a| self.files.contains_key(a))
        {
            return Err(Error::UnderFile(ancestor));
        }
        Ok(())
    }

    /// Creates or replaces a file; `true` when it was created.
    pub fn upsert(&mut self, path: &FilePath, size: i64) -> Result<bool, Error> {
        if let Some(existing) = self.files.get_mut(path.as_str()) {
            *existing = size;
            return Ok(false);
        }
        self.check_file_slot(path)?;
        self.check_fold(path.as_str())?;
        self.insert(path.to_string(), size);
        Ok(true)
    }

    /// Deletes a file, or a folder and everything below it; returns the deleted paths.
    pub fn delete(&mut self, path: &FilePath) -> Result<Vec<String>, Error> {
        let doomed: Vec<String> = if self.files.contains_key(path.as_str()) {
            vec![path.to_string()]
        } else {
            self.below(path.as_str()).cloned().collect()
        };
        if doomed.is_empty() {
            return Err(Error::NotFound(path.to_string()));
        }
        if let Some(main) = &self.main {
            if doomed.contains(main) {
                return Err(Error::DeletesMainFile(main.clone()));
            }
        }
        for p in &doomed {
            self.remove(p);
        }
        Ok(doomed)
    }

    /// Moves a file or a folder; the main file stays main under its new path. Every path the
    /// move makes passes the rules of a saved file (depth, length, names).
    pub fn move_path(
        &mut self,
        from: &FilePath,
        to: &FilePath,
        limits: &LimitSettings,
    ) -> Result<Renames, Error> {
        if to.is_within(from) {
            return Err(Error::MoveIntoItself {
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        let sources: Vec<String> = if self.files.contains_key(from.as_str()) {
            vec![from.to_string()]
        } else {
            self.below(from.as_str()).cloned().collect()
        };
        if sources.is_empty() {
            return Err(Error::NotFound(from.to_string()));
        }
        if self.files.contains_key(to.as_str()) || self.is_folder(to.as_str()) {
            return Err(Error::Exists(to.to_string()));
        }
        if let Some(ancestor) = to
            .ancestors()
            .into_iter()
            .find(|a| self.files.contains_key(a))
        {
            return Err(Error::UnderFile(ancestor));
        }
        let mut renames: Renames = Vec::with_capacity(sources.len());
        for old in sources {
            let new = format!("{}{}", to.as_str(), &old[from.as_str().len()..]);
            if let Err(reason) = FilePath::parse(&new, limits) {
                return Err(Error::InvalidPath {
                    path: new,
                    reason: reason.0,
                });
            }
            renames.push((old, new));
        }
        // Take the sources out, then check each new path against what stays; on a clash put
        // everything back as it was.
        let sizes: Vec<i64> = renames
            .iter()
            .map(|(old, _)| self.remove(old).unwrap_or(0))
            .collect();
        for (i, (_, new)) in renames.iter().enumerate() {
            if let Err(clash) = self.check_fold(new) {
                for (_, placed) in &renames[..i] {
                    self.remove(placed);
                }
                for ((old, _), size) in renames.iter().zip(&sizes) {
                    self.insert(old.clone(), *size);
                }
                return Err(clash);
            }
            self.insert(new.clone(), sizes[i]);
        }
        for (old, new) in &renames {
            if self.main.as_deref() == Some(old.as_str()) {
                self.main = Some(new.clone());
            }
        }
        Ok(renames)
    }

    /// The task-wide limits: file count and total size.
    pub fn check_limits(&self, limits: &LimitSettings) -> Result<(), Error> {
        if self.files.len() > limits.max_files_per_task as usize {
            return Err(Error::TooManyFiles {
                max: limits.max_files_per_task,
            });
        }
        if self.total_size() as u64 > limits.max_task_bytes {
            return Err(Error::TaskTooLarge {
                max: limits.max_task_bytes,
            });
        }
        Ok(())
    }

    /// The tree the API shows: folders first, then files, each by name. Built without
    /// recursion, so no nesting can exhaust the stack.
    pub fn tree(&self) -> Vec<TreeNode> {
        let mut arena = Arena::default();
        let mut folders: HashMap<&str, usize> = HashMap::new();
        for (path, size) in &self.files {
            let mut parent = None;
            for (at, _) in path.match_indices('/') {
                let folder = &path[..at];
                let index = match folders.get(folder) {
                    Some(&index) => index,
                    None => {
                        let index = arena.add(node(folder, NodeKind::Folder, 0, false), parent);
                        folders.insert(folder, index);
                        index
                    }
                };
                arena.grow(index, *size);
                parent = Some(index);
            }
            let main = self.main.as_deref() == Some(path.as_str());
            arena.add(node(path, NodeKind::File, *size, main), parent);
        }
        arena.into_tree()
    }
}

fn node(path: &str, kind: NodeKind, size: i64, main: bool) -> TreeNode {
    TreeNode {
        name: path.rsplit('/').next().unwrap_or(path).to_owned(),
        path: path.to_owned(),
        kind,
        size,
        main,
        children: (kind == NodeKind::Folder).then(Vec::new),
    }
}

/// The tree's nodes in creation order, each with its children's indices: a child is always
/// created after its folder, which lets [`Arena::into_tree`] assemble bottom-up in one pass.
#[derive(Default)]
struct Arena {
    nodes: Vec<Option<TreeNode>>,
    children: Vec<Vec<usize>>,
    roots: Vec<usize>,
}

impl Arena {
    fn add(&mut self, node: TreeNode, parent: Option<usize>) -> usize {
        let index = self.nodes.len();
        self.nodes.push(Some(node));
        self.children.push(Vec::new());
        match parent {
            Some(p) => self.children[p].push(index),
            None => self.roots.push(index),
        }
        index
    }

    fn grow(&mut self, index: usize, size: i64) {
        if let Some(node) = self.nodes[index].as_mut() {
            node.size += size;
        }
    }

    fn into_tree(mut self) -> Vec<TreeNode> {
        fn order(a: &TreeNode, b: &TreeNode) -> std::cmp::Ordering {
            (a.kind, &a.name).cmp(&(b.kind, &b.name))
        }
        // Last created first: every child is complete before its folder takes it.
        for index in (0..self.nodes.len()).rev() {
            if self.children[index].is_empty() {
                continue;
            }
            let mut kids: Vec<TreeNode> = self.children[index]
                .iter()
                .filter_map(|&child| self.nodes[child].take())
                .collect();
            kids.sort_by(order);
            if let Some(node) = self.nodes[index].as_mut() {
                node.children = Some(kids);
            }
        }
        let mut root: Vec<TreeNode> = self
            .roots
            .iter()
            .filter_map(|&index| self.nodes[index].take())
            .collect();
        root.sort_by(order);
        root
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Folder,
    File,
}

/// A node of a task's file tree; a folder's size is the sum of the files below it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TreeNode {
    pub name: String,
    pub path: String,
    pub kind: NodeKind,
    pub size: i64,
    pub main: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub children: Option<Vec<TreeNode>>,
}

/// A file's metadata, as a save returns it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FileInfo {
    pub path: String,
    pub size: i64,
    pub main: bool,
    pub updated_at: DateTime<Utc>,
}

/// Locks the task row and loads its file set; the lock holds until the transaction ends.
async fn lock(conn: &mut PgConnection, task_id: Uuid) -> Result<FileSet, Error> {
    let main: Option<Option<String>> = sqlx::query_scalar!(
        "SELECT main_file FROM tasks WHERE id = $1 FOR UPDATE",
        task_id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let main = main.ok_or(Error::TaskNotFound)?;
    let files = sqlx::query!(
        "SELECT path, size FROM task_files WHERE task_id = $1",
        task_id
    )
    .fetch_all(&mut *conn)
    .await?;
    let files: Vec<(String, i64)> = files.into_iter().map(|f| (f.path, f.size)).collect();
    Ok(FileSet::new(files, main))
}

/// Writes the task's new totals, main file and change time.
async fn touch(conn: &mut PgConnection, task_id: Uuid, set: &FileSet) -> Result<(), Error> {
    sqlx::query!(
        "UPDATE tasks SET total_size = $2, file_count = $3, main_file = $4, updated_at = now()
         WHERE id = $1",
        task_id,
        set.total_size(),
        (set.len() as i32),
        set.main()
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_file(
    conn: &mut PgConnection,
    task_id: Uuid,
    path: &str,
    content: &str,
) -> Result<DateTime<Utc>, Error> {
    let updated_at = sqlx::query_scalar!(
        "INSERT INTO task_files (task_id, path, content, size) VALUES ($1, $2, $3, $4)
         ON CONFLICT (task_id, path) DO UPDATE
            SET content = EXCLUDED.content, size = EXCLUDED.size, updated_at = now()
         RETURNING updated_at",
        task_id,
        path,
        content,
        (content.len() as i64)
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(updated_at)
}

async fn delete_paths(
    conn: &mut PgConnection,
    task_id: Uuid,
    paths: &[String],
) -> Result<(), Error> {
    sqlx::query!(
        "DELETE FROM task_files WHERE task_id = $1 AND path = ANY($2)",
        task_id,
        paths
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The task's file set, without locking.
pub async fn file_set(
    pool: &PgPool,
    task_id: Uuid,
    main: Option<String>,
) -> Result<FileSet, sqlx::Error> {
    let files = sqlx::query!(
        "SELECT path, size FROM task_files WHERE task_id = $1",
        task_id
    )
    .fetch_all(pool)
    .await?;
    let files: Vec<(String, i64)> = files.into_iter().map(|f| (f.path, f.size)).collect();
    Ok(FileSet::new(files, main))
}

/// One file's content, if the file exists.
pub async fn read(
    pool: &PgPool,
    task_id: Uuid,
    path: &FilePath,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT content FROM task_files WHERE task_id = $1 AND path = $2",
        task_id,
        path.as_str()
    )
    .fetch_optional(pool)
    .await
}

/// Every file with its content, by path: the archive and the run snapshot.
pub async fn read_all(pool: &PgPool, task_id: Uuid) -> Result<Vec<(String, String)>, sqlx::Error> {
    let files = sqlx::query!(
        "SELECT path, content FROM task_files WHERE task_id = $1 ORDER BY path",
        task_id,
    )
    .fetch_all(pool)
    .await?;
    Ok(files.into_iter().map(|f| (f.path, f.content)).collect())
}

/// Creates or replaces one file; the flag says whether it was created.
pub async fn save(
    pool: &PgPool,
    task_id: Uuid,
    path: &FilePath,
    content: &str,
    limits: &LimitSettings,
) -> Result<(FileInfo, bool), Error> {
    let mut tx = pool.begin().await?;
    let mut set = lock(&mut tx, task_id).await?;
    let created = set.upsert(path, content.len() as i64)?;
    set.check_limits(limits)?;
    let updated_at = write_file(&mut tx, task_id, path.as_str(), content).await?;
    touch(&mut tx, task_id, &set).await?;
    tx.commit().await?;
    let info = FileInfo {
        path: path.to_string(),
        size: content.len() as i64,
        main: set.main() == Some(path.as_str()),
        updated_at,
    };
    Ok((info, created))
}

/// What [`replace`] did.
#[derive(Debug)]
pub enum Replaced {
    /// The file existed and now has the new content.
    Saved(FileInfo),
    /// The task belongs to this owner, not to the actor: nothing was written.
    NotOwner(Uuid),
    /// The actor's task has no file at the path: a new file needs the path rules ([`save`]).
    Absent,
}

/// Replaces an existing file's content in one round trip (the `replace_file` function):
/// the task's lock, the owner check, the limits and both writes. Only the task's owner may
/// write its files.
pub async fn replace(
    pool: &PgPool,
    task_id: Uuid,
    actor: Uuid,
    path: &FilePath,
    content: &str,
    limits: &LimitSettings,
) -> Result<Replaced, Error> {
    let row = sqlx::query!(
        r#"SELECT outcome AS "outcome!", owner_id, main_file, updated_at
           FROM replace_file($1, $2, $3, $4, $5, $6)"#,
        task_id,
        actor,
        path.as_str(),
        content,
        i32::try_from(limits.max_files_per_task).unwrap_or(i32::MAX),
        i64::try_from(limits.max_task_bytes).unwrap_or(i64::MAX),
    )
    .fetch_one(pool)
    .await?;
    match row.outcome.as_str() {
        "saved" => Ok(Replaced::Saved(FileInfo {
            path: path.to_string(),
            size: content.len() as i64,
            main: row.main_file.as_deref() == Some(path.as_str()),
            updated_at: row.updated_at.unwrap_or_else(Utc::now),
        })),
        "not_owner" => Ok(Replaced::NotOwner(row.owner_id.unwrap_or_default())),
        "absent" => Ok(Replaced::Absent),
        "no_task" => Err(Error::TaskNotFound),
        "too_many_files" => Err(Error::TooManyFiles {
            max: limits.max_files_per_task,
        }),
        "too_large" => Err(Error::TaskTooLarge {
            max: limits.max_task_bytes,
        }),
        other => Err(Error::Db(sqlx::Error::Protocol(format!(
            "replace_file answered `{other}`"
        )))),
    }
}

/// Deletes a file, or a folder and all below it; returns the deleted paths.
pub async fn delete(pool: &PgPool, task_id: Uuid, path: &FilePath) -> Result<Vec<String>, Error> {
    let mut tx = pool.begin().await?;
    let mut set = lock(&mut tx, task_id).await?;
    let deleted = set.delete(path)?;
    delete_paths(&mut tx, task_id, &deleted).await?;
    touch(&mut tx, task_id, &set).await?;
    tx.commit().await?;
    Ok(deleted)
}

/// Deletes `delete` (files or folders), then creates or replaces `upsert`, all or nothing.
pub async fn batch(
    pool: &PgPool,
    task_id: Uuid,
    upsert: &[(FilePath, String)],
    delete: &[FilePath],
    limits: &LimitSettings,
) -> Result<FileSet, Error> {
    let mut named = std::collections::HashSet::new();
    for path in upsert.iter().map(|(p, _)| p).chain(delete) {
        if !named.insert(path.as_str()) {
            return Err(Error::Duplicate(path.to_string()));
        }
    }
    let mut tx = pool.begin().await?;
    let mut set = lock(&mut tx, task_id).await?;
    let mut deleted = Vec::new();
    for path in delete {
        deleted.extend(set.delete(path)?);
    }
    for (path, content) in upsert {
        set.upsert(path, content.len() as i64)?;
    }
    set.check_limits(limits)?;
    if !deleted.is_empty() {
        delete_paths(&mut tx, task_id, &deleted).await?;
    }
    for (path, content) in upsert {
        write_file(&mut tx, task_id, path.as_str(), content).await?;
    }
    touch(&mut tx, task_id, &set).await?;
    tx.commit().await?;
    Ok(set)
}

/// Renames or moves a file or a folder.
pub async fn move_path(
    pool: &PgPool,
    task_id: Uuid,
    from: &FilePath,
    to: &FilePath,
    limits: &LimitSettings,
) -> Result<(FileSet, Renames), Error> {
    let mut tx = pool.begin().await?;
    let mut set = lock(&mut tx, task_id).await?;
    let renames = set.move_path(from, to, limits)?;
    let (old, new): (Vec<String>, Vec<String>) = renames.iter().cloned().unzip();
    sqlx::query!(
        "UPDATE task_files f SET path = m.new, updated_at = now()
         FROM unnest($2::text[], $3::text[]) AS m(old, new)
         WHERE f.task_id = $1 AND f.path = m.old",
        task_id,
        &old,
        &new
    )
    .execute(&mut *tx)
    .await?;
    touch(&mut tx, task_id, &set).await?;
    tx.commit().await?;
    Ok((set, renames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn limits() -> LimitSettings {
        Settings::with_overrides([("local_stack", "true".to_string())])
            .unwrap()
            .limits
    }

    fn p(s: &str) -> FilePath {
        FilePath::parse(s, &limits()).unwrap()
    }

    fn set() -> FileSet {
        FileSet::new(
            [
                ("main.py".into(), 10),
                ("lib/a.py".into(), 5),
                ("lib/sub/b.py".into(), 7),
            ],
            Some("main.py".into()),
        )
    }

    #[test]
    fn a_file_cannot_take_a_folders_path_nor_live_under_a_file() {
        let mut s = set();
        assert!(matches!(s.upsert(&p("lib"), 1), Err(Error::IsFolder(_))));
        assert!(matches!(
            s.upsert(&p("main.py/x"), 1),
            Err(Error::UnderFile(_))
        ));
        assert!(s.upsert(&p("lib2"), 1).unwrap());
        assert!(!s.upsert(&p("lib/a.py"), 9).unwrap());
    }

    #[test]
    fn deleting_a_folder_takes_everything_below_it_but_not_its_namesakes() {
        let mut s = set();
        s.upsert(&p("libx.py"), 1).unwrap();
        let deleted = s.delete(&p("lib")).unwrap();
        assert_eq!(deleted, ["lib/a.py", "lib/sub/b.py"]);
        assert_eq!(s.len(), 2);
        assert!(matches!(s.delete(&p("nothing")), Err(Error::NotFound(_))));
        assert!(matches!(
            s.delete(&p("main.py")),
            Err(Error::DeletesMainFile(_))
        ));
    }

    #[test]
    fn moves_keep_the_main_file_main_and_refuse_moving_into_themselves() {
        let mut s = set();
        assert!(matches!(
            s.move_path(&p("lib"), &p("lib/sub/x"), &limits()),
            Err(Error::MoveIntoItself { .. })
        ));
        assert!(matches!(
            s.move_path(&p("lib"), &p("lib"), &limits()),
            Err(Error::MoveIntoItself { .. })
        ));
        assert!(matches!(
            s.move_path(&p("lib/a.py"), &p("main.py"), &limits()),
            Err(Error::Exists(_))
        ));
        assert!(matches!(
            s.move_path(&p("lib/a.py"), &p("main.py/a.py"), &limits()),
            Err(Error::UnderFile(_))
        ));
        s.move_path(&p("main.py"), &p("src/app.py"), &limits())
            .unwrap();
        assert_eq!(s.main(), Some("src/app.py"));
        let renames = s.move_path(&p("lib"), &p("src/lib"), &limits()).unwrap();
        assert_eq!(renames.len(), 2);
        assert_eq!(s.tree()[0].name, "src");
    }

    #[test]
    fn the_tree_nests_folders_first_and_sums_sizes() {
        let tree = set().tree();
        assert_eq!(tree.len(), 2);
        assert_eq!(tree[0].kind, NodeKind::Folder);
        assert_eq!(tree[0].size, 12);
        assert_eq!(tree[0].children.as_ref().unwrap()[0].path, "lib/sub");
        assert!(tree[1].main);
    }

    #[test]
    fn limits_count_files_and_bytes() {
        let mut l = limits();
        l.max_files_per_task = 3;
        l.max_task_bytes = 22;
        let mut s = set();
        assert!(s.check_limits(&l).is_ok());
        s.upsert(&p("x"), 0).unwrap();
        assert!(matches!(
            s.check_limits(&l),
            Err(Error::TooManyFiles { .. })
        ));
        let mut s = set();
        s.upsert(&p("main.py"), 11).unwrap();
        assert!(matches!(
            s.check_limits(&l),
            Err(Error::TaskTooLarge { .. })
        ));
    }

    #[test]
    fn names_differing_only_by_case_or_normalisation_are_refused() {
        let mut s = set();
        for clash in ["MAIN.py", "Lib/c.py", "lib/SUB/b.py", "LIB"] {
            assert!(
                matches!(s.upsert(&p(clash), 1), Err(Error::NameClash { .. })),
                "{clash}"
            );
        }
        s.upsert(&p("caf\u{00E9}.py"), 1).unwrap();
        assert!(matches!(
            s.upsert(&p("cafe\u{0301}.py"), 1),
            Err(Error::NameClash { .. })
        ));
        assert!(matches!(
            s.move_path(&p("lib/a.py"), &p("Main.py"), &limits()),
            Err(Error::NameClash { .. })
        ));
        assert!(
            s.files.contains_key("lib/a.py"),
            "a refused move changes nothing"
        );
        // Replacing the same path, and renaming a file to another case of itself, are fine.
        assert!(!s.upsert(&p("main.py"), 3).unwrap());
        s.move_path(&p("lib"), &p("Lib"), &limits()).unwrap();
        assert!(s.upsert(&p("Lib/c.py"), 1).unwrap());
        // Once a name is gone, its other spelling is free.
        s.delete(&p("Lib")).unwrap();
        assert!(s.upsert(&p("LIB/x.py"), 1).unwrap());
    }

    #[test]
    fn a_move_cannot_make_a_path_a_save_would_refuse() {
        let mut l = limits();
        l.max_path_depth = 4;
        l.max_path_bytes = 20;
        let mut s = FileSet::new([("a/b/c.txt".into(), 1)], None);
        let q = |raw: &str| FilePath::parse(raw, &l).unwrap();
        assert!(matches!(
            s.move_path(&q("a"), &q("x/y/a"), &l),
            Err(Error::InvalidPath { .. })
        ));
        assert!(matches!(
            s.move_path(&q("a"), &q("a-very-long-name"), &l),
            Err(Error::InvalidPath { .. })
        ));
        assert_eq!(s.len(), 1);
        assert!(s.files.contains_key("a/b/c.txt"));
        s.move_path(&q("a"), &q("x/a"), &l).unwrap();
        assert!(s.files.contains_key("x/a/b/c.txt"));
    }

    #[test]
    fn alternating_moves_stop_at_the_depth_limit() {
        let l = limits();
        let mut s = FileSet::new([("a/f.txt".into(), 1)], None);
        let mut refused = 0;
        for i in 0..40 {
            // `a/…` → `b/a/…` → `a/b/a/…`: each move nests everything one level deeper.
            let top = s.files.keys().next().unwrap().split('/').next().unwrap();
            let (from, to) = if top == "a" {
                ("a", "b/a")
            } else {
                ("b", "a/b")
            };
            match s.move_path(&p(from), &p(to), &l) {
                Ok(_) => {}
                Err(Error::InvalidPath { .. }) => refused += 1,
                Err(e) => panic!("move {i}: {e}"),
            }
            for path in s.files.keys() {
                assert!(FilePath::parse(path, &l).is_ok(), "{path}");
            }
        }
        assert!(refused > 0);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_very_deep_tree_is_built_without_recursion() {
        // Deeper than any path the rules allow, as a task stored by an older release could be.
        let deep = vec!["d"; 1000].join("/") + "/leaf.txt";
        let s = FileSet::new([(deep.clone(), 5)], None);
        let tree = s.tree();
        let mut node = &tree[0];
        let mut depth = 1;
        while let Some(children) = &node.children {
            assert_eq!(node.size, 5);
            node = &children[0];
            depth += 1;
        }
        assert_eq!(depth, 1001);
        assert_eq!(node.path, deep);
    }
}
