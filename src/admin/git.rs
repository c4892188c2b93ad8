//! Git write mode (`--git-remote`): every admin or console write becomes one commit pushed to
//! the branch the fleet reads (or, with `--git-review-branch`, to a branch of its own for
//! review), and the served set follows that branch.
//!
//! Layout under `STATE_DIR/git/`: `clone/` is the working clone where changes are made;
//! `rev-<commit>/` are detached worktrees of commits fetched back from the remote; `served` is
//! a symlink to the one being served, swapped atomically exactly as git-sync swaps its link,
//! and the prompts folder is `served/<--git-path>`. So the served set changes only when a
//! commit is on the remote and has come back through the normal reload.
//!
//! One write at a time: every use of the clone holds `clone` (a Tokio mutex dedicated to it,
//! the only lock held across an await). A write starts from the commit being served — what the
//! person making the change saw — so a push that loses a race (someone pushed first) rebases on
//! the new tip and is pushed once more if the change still validates there; otherwise it is
//! answered 409 naming what conflicted. A change that does not validate is refused before
//! anything is committed.
//!
//! Credentials: the standard git environment (`GIT_SSH_COMMAND`, credential helpers), or a
//! mounted SSH key (`--git-ssh-key`) or token file (`--git-token-file`, read by a credential
//! helper at each use). A token never goes into a URL or a command line, and URLs in messages
//! have any user information removed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::process::Command;

use super::write::{Change, WriteError, Writer};
use crate::audit::Actor;
use crate::prompts::{self, Overlay};

/// Settings of git write mode.
#[derive(Debug, Clone)]
pub struct GitConfig {
    /// The repository (`https://…`, `ssh://…`, `git@host:org/repo.git` or a local path).
    pub remote: String,
    /// The branch every replica serves.
    pub branch: String,
    /// The prompts folder inside the repository.
    pub path: PathBuf,
    /// Push each change to `PREFIX/<prompt>-v<N>` for review instead of to the branch.
    pub review_prefix: Option<String>,
    /// A link to a pushed change: `{branch}`, `{commit}` and `{base}` are filled in.
    pub web_url: Option<String>,
    /// A private SSH key file for the remote.
    pub ssh_key: Option<PathBuf>,
    /// `known_hosts` for SSH; without it the host key is accepted on first use.
    pub known_hosts: Option<PathBuf>,
    /// A file holding an HTTPS token (read at each use, so a rotated Secret is picked up).
    pub token_file: Option<PathBuf>,
    /// The user name sent with the token.
    pub username: String,
    /// How often the branch (and pending review branches) are fetched.
    pub poll: Duration,
    /// Bound on each git command.
    pub timeout: Duration,
}

impl GitConfig {
    pub fn new(remote: impl Into<String>) -> Self {
        GitConfig {
            remote: remote.into(),
            branch: "main".to_owned(),
            path: PathBuf::from("prompts"),
            review_prefix: None,
            web_url: None,
            ssh_key: None,
            known_hosts: None,
            token_file: None,
            username: "x-access-token".to_owned(),
            poll: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
        }
    }
}

/// What went wrong talking to git or the remote.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// A git command failed: what it was doing, which ref, and git's own words.
    #[error("git could not {what}: {detail}")]
    Command { what: String, detail: String },
    /// The push lost a race and the change does not go on the new tip.
    #[error("{0}")]
    Conflict(String),
    /// The change itself was refused; nothing was committed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Where a write landed.
#[derive(Debug, Clone, Serialize)]
pub struct Landed {
    /// The commit made (none when the change changed nothing).
    pub commit: Option<String>,
    /// With review: the branch pushed, and its link.
    pub review: Option<Pending>,
    /// Pushed, but not fetched back and served yet: why (the next poll serves it).
    pub not_served: Option<String>,
}

/// A change pushed for review and not yet on the served branch.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pending {
    pub branch: String,
    pub commit: String,
    pub prompt: String,
    pub summary: String,
    pub author: String,
    pub time: String,
    pub url: Option<String>,
}

struct Clone {
    /// The commit being served.
    served: String,
}

/// The working clone and the served checkout.
pub struct GitStore {
    config: GitConfig,
    root: PathBuf,
    clone_dir: PathBuf,
    writer: std::sync::Arc<Writer>,
    clone: tokio::sync::Mutex<Clone>,
    served: Mutex<String>,
    pending: Mutex<Vec<Pending>>,
}

/// Review branches listed at most (a prefix shared with hundreds of stale branches must not
/// make every poll slow).
const MAX_PENDING: usize = 100;

impl GitStore {
    /// Prepares `STATE_DIR/git`: the working clone (fetched) and the served checkout of the
    /// branch's tip. Returns the store; the prompts folder to serve is [`GitStore::prompts_dir`].
    pub async fn open(config: GitConfig, state_dir: &Path) -> Result<GitStore, GitError> {
        let root = std::path::absolute(state_dir.join("git")).map_err(|e| GitError::Command {
            what: "find the state folder".to_owned(),
            detail: e.to_string(),
        })?;
        let clone_dir = root.join("clone");
        let io = |what: &str, e: std::io::Error| GitError::Command {
            what: what.to_owned(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(&root).map_err(|e| io("create the git folder", e))?;
        let store = GitStore {
            writer: std::sync::Arc::new(Writer::new(clone_dir.join(&config.path))),
            config,
            clone_dir,
            clone: tokio::sync::Mutex::new(Clone {
                served: String::new(),
            }),
            served: Mutex::new(String::new()),
            pending: Mutex::new(Vec::new()),
            root,
        };
        let mut clone = store.clone.lock().await;
        if !store.clone_dir.join(".git").exists() {
            store.init_clone().await?;
        } else {
            // The state folder outlives the container: a git killed with it left this clone.
            store.recover().await;
            store
                .run(
                    &["remote", "set-url", "origin", &store.config.remote],
                    "set the remote",
                )
                .await?;
        }
        let tip = store.fetch_branch().await?;
        store.publish(&mut clone, &tip).await?;
        drop(clone);
        if !store.prompts_dir().is_dir() {
            return Err(GitError::Command {
                what: format!(
                    "find the prompts folder `{}` on branch `{}`",
                    store.config.path.display(),
                    store.config.branch
                ),
                detail: format!(
                    "commit {} has no such folder (set --git-path to the folder holding the prompts)",
                    short(&tip)
                ),
            });
        }
        store.refresh_pending().await;
        Ok(store)
    }

    /// A new, empty working clone with the remote as `origin` (anything there is removed).
    async fn init_clone(&self) -> Result<(), GitError> {
        let io = |what: &str, e: std::io::Error| GitError::Command {
            what: what.to_owned(),
            detail: e.to_string(),
        };
        let dir = self.clone_dir.clone();
        tokio::task::spawn_blocking(move || {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| io("remove the working clone", e))?;
            }
            std::fs::create_dir_all(&dir).map_err(|e| io("create the working clone", e))
        })
        .await
        .map_err(|e| io("create the working clone", std::io::Error::other(e)))??;
        self.run(&["init", "-q"], "create the working clone")
            .await?;
        self.run(
            &["remote", "add", "origin", &self.config.remote],
            "add the remote",
        )
        .await
    }

    /// Undoes what a git killed midway (by the timeout, out of memory, or with its container,
    /// whose state folder survives it) leaves in the clone: lock files, which would fail every
    /// later command, and an unfinished rebase. Called with the clone's lock held, so no git of
    /// ours is running in it and every lock found is stale.
    async fn recover(&self) {
        let git_dir = self.clone_dir.join(".git");
        let dir = git_dir.clone();
        let removed = tokio::task::spawn_blocking(move || remove_locks(&dir))
            .await
            .unwrap_or_default();
        for lock in removed {
            tracing::warn!(lock = %lock.display(), "removed a stale git lock from the working clone");
        }
        for rebase in ["rebase-merge", "rebase-apply"] {
            let dir = git_dir.join(rebase);
            if dir.exists() {
                tracing::warn!("aborting a rebase left unfinished in the working clone");
                let _ = self.exec(&["rebase", "--abort"], "abort the rebase").await;
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
        }
    }

    /// Makes the clone usable again when it cannot even be checked out (a git killed while
    /// writing the index or objects): a fresh clone, fetched.
    async fn reclone(&self) -> Result<(), GitError> {
        tracing::warn!("the working clone is broken; cloning again");
        self.init_clone().await?;
        self.fetch_branch().await.map(drop)
    }

    /// The prompts folder being served: through the `served` link.
    pub fn prompts_dir(&self) -> PathBuf {
        self.root.join("served").join(&self.config.path)
    }

    pub fn config(&self) -> &GitConfig {
        &self.config
    }

    /// The commit being served.
    pub fn served_commit(&self) -> String {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes pushed for review and not yet on the branch, newest first.
    pub fn pending(&self) -> Vec<Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The remote as it may be shown: without user information.
    pub fn remote_shown(&self) -> String {
        redact(&self.config.remote)
    }

    /// Fetches the branch; when its tip moved, serves the new tip (the reloader picks it up)
    /// and refreshes the pending review branches. The poll loop calls this.
    pub async fn sync(&self, reloader: &crate::reload::Reloader) -> Result<bool, GitError> {
        let mut clone = self.clone.lock().await;
        self.recover().await;
        let tip = self.fetch_branch().await?;
        let moved = tip != clone.served;
        if moved {
            self.publish(&mut clone, &tip).await?;
        }
        drop(clone);
        if moved {
            let _ = reloader.reload(Actor::disk()).await;
        }
        self.refresh_pending().await;
        Ok(moved)
    }

    /// Makes one change as one commit: `op` changes the files of the working clone (through
    /// the admin [`Writer`], so the same validation and the same files as a hand edit),
    /// `describe` says what it did. Pushes it to the branch (or a review branch) and, once it
    /// is on the remote, serves it.
    pub async fn write<T: Send + 'static>(
        &self,
        actor: &Actor,
        op: impl FnOnce(&Writer) -> Result<(T, Change), WriteError> + Send + 'static,
    ) -> Result<(T, Landed), GitError> {
        let mut clone = self.clone.lock().await;
        let base = clone.served.clone();
        self.recover().await;
        if let Err(e) = self.reset_to(&base).await {
            tracing::warn!("{e}");
            self.reclone().await?;
            self.reset_to(&base).await?;
        }
        // Numbers held by changes waiting for review are not handed out again.
        for pending in self.pending() {
            let number = pending
                .branch
                .rsplit_once('/')
                .and_then(|(_, name)| name.strip_prefix(&pending.prompt))
                .and_then(|rest| rest.strip_prefix("-v"))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(number) = number {
                self.writer.reserve(&pending.prompt, number);
            }
        }
        let writer = self.writer.clone();
        let done = tokio::task::spawn_blocking(move || op(&writer))
            .await
            .map_err(|e| GitError::Command {
                what: "make the change".to_owned(),
                detail: e.to_string(),
            })?;
        let (value, change) = match done {
            Ok(done) => done,
            Err(e) => {
                // Nothing is committed; leave the clone as the served commit.
                let _ = self.reset_to(&base).await;
                return Err(e.into());
            }
        };
        let path = self.config.path.to_string_lossy().into_owned();
        self.run(&["add", "-A", "--", &path], "stage the change")
            .await?;
        let staged = self
            .output(&["diff", "--cached", "--name-only"], "list the change")
            .await?;
        if staged.trim().is_empty() {
            return Ok((
                value,
                Landed {
                    commit: None,
                    review: None,
                    not_served: None,
                },
            ));
        }
        let message = commit_message(&change, actor);
        let author = author_of(actor);
        self.run(
            &[
                "commit",
                "-q",
                "--no-verify",
                "--author",
                &author,
                "-m",
                &message,
            ],
            "commit the change",
        )
        .await?;
        let landed = match &self.config.review_prefix {
            Some(prefix) => {
                let branch = review_branch(prefix, &change, chrono::Utc::now());
                let commit = self.push_review(&branch).await?;
                let pending = Pending {
                    url: self.web_url(&branch, &commit, &base),
                    branch,
                    commit: commit.clone(),
                    prompt: change.prompt.clone(),
                    summary: change.summary.clone(),
                    author: actor.name.clone(),
                    time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                };
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(0, pending.clone());
                Landed {
                    commit: Some(commit),
                    review: Some(pending),
                    not_served: None,
                }
            }
            None => {
                let commit = self.push_direct(&change).await?;
                // Served only as it comes back from the remote. The push has happened either
                // way, so a failure here is reported, not an error.
                let served = match self.fetch_branch().await {
                    Ok(tip) => self.publish(&mut clone, &tip).await,
                    Err(e) => Err(e),
                };
                Landed {
                    commit: Some(commit),
                    review: None,
                    not_served: served
                        .err()
                        .map(|e| format!("pushed, but not yet fetched back to serve it: {e}")),
                }
            }
        };
        Ok((value, landed))
    }

    /// Pushes HEAD to the branch; on a lost race rebases on the new tip and pushes once more
    /// if the prompt still validates there. Returns the commit pushed.
    async fn push_direct(&self, change: &Change) -> Result<String, GitError> {
        let target = format!("HEAD:refs/heads/{}", self.config.branch);
        if self.push(&target).await? {
            return self.output(&["rev-parse", "HEAD"], "read HEAD").await;
        }
        tracing::info!(branch = %self.config.branch, "the push lost a race; rebasing on the new tip");
        let tip = self.fetch_branch().await?;
        let rebased = self
            .exec(&["rebase", "-q", &tip], "rebase the change")
            .await?;
        if !rebased.status.success() {
            let conflicted = self
                .output(
                    &["diff", "--name-only", "--diff-filter=U"],
                    "list the conflicts",
                )
                .await
                .unwrap_or_default();
            let _ = self.exec(&["rebase", "--abort"], "abort the rebase").await;
            let files: Vec<String> = conflicted
                .lines()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>();
            return Err(GitError::Conflict(format!(
                "branch `{}` moved on (now {}) and the change to `{}` conflicts with it in {}; nothing was pushed: reload and make the change again",
                self.config.branch,
                short(&tip),
                change.prompt,
                if files.is_empty() {
                    "the same files".to_owned()
                } else {
                    files.join(", ")
                }
            )));
        }
        let root = self.clone_dir.join(&self.config.path);
        let prompt = change.prompt.clone();
        let checked = tokio::task::spawn_blocking(move || {
            prompts::check_prompt(&root, &prompt, &Overlay::new())
        })
        .await
        .map_err(|e| GitError::Command {
            what: "validate the rebased change".to_owned(),
            detail: e.to_string(),
        })?;
        if let Err(problems) = checked {
            return Err(GitError::Conflict(format!(
                "branch `{}` moved on (now {}) and the change to `{}` does not validate on top of it; nothing was pushed:\n{problems}",
                self.config.branch,
                short(&tip),
                change.prompt
            )));
        }
        if self.push(&target).await? {
            return self.output(&["rev-parse", "HEAD"], "read HEAD").await;
        }
        Err(GitError::Conflict(format!(
            "branch `{}` moved on twice while the change to `{}` was being pushed; nothing was pushed: try again",
            self.config.branch, change.prompt
        )))
    }

    /// Pushes HEAD to a new review branch; one that exists already is a conflict.
    async fn push_review(&self, branch: &str) -> Result<String, GitError> {
        if self.push(&format!("HEAD:refs/heads/{branch}")).await? {
            return self.output(&["rev-parse", "HEAD"], "read HEAD").await;
        }
        Err(GitError::Conflict(format!(
            "review branch `{branch}` already exists on the remote with other commits; nothing was pushed: merge or delete it first"
        )))
    }

    /// `git push`: `Ok(true)` when pushed, `Ok(false)` when the remote refused it as not a
    /// fast-forward, an error for anything else.
    async fn push(&self, refspec: &str) -> Result<bool, GitError> {
        let what = format!("push to `{}`", refspec.trim_start_matches("HEAD:"));
        let out = self
            .exec(&["push", "--porcelain", "origin", refspec], &what)
            .await?;
        if out.status.success() {
            return Ok(true);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rejected = stdout.lines().any(|l| {
            l.starts_with('!')
                && (l.contains("fetch first")
                    || l.contains("non-fast-forward")
                    || l.contains("already exists")
                    || l.contains("stale info"))
        });
        if rejected {
            return Ok(false);
        }
        Err(GitError::Command {
            what,
            detail: detail_of(&out),
        })
    }

    /// Fetches the branch; returns its tip.
    async fn fetch_branch(&self) -> Result<String, GitError> {
        let branch = &self.config.branch;
        let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        self.run(
            &["fetch", "-q", "--no-tags", "origin", &spec],
            &format!("fetch branch `{branch}` from {}", self.remote_shown()),
        )
        .await
        .map_err(|e| match e {
            GitError::Command { what, detail } if detail.contains("couldn't find remote ref") => {
                GitError::Command {
                    what,
                    detail: format!(
                        "{detail} (the branch must exist, holding the prompts folder `{}`: push a first commit, or set --git-branch)",
                        self.config.path.display()
                    ),
                }
            }
            e => e,
        })?;
        self.output(
            &[
                "rev-parse",
                &format!("refs/remotes/origin/{branch}^{{commit}}"),
            ],
            &format!("read the tip of branch `{branch}`"),
        )
        .await
    }

    /// Puts the working clone at `commit` with nothing else in it.
    async fn reset_to(&self, commit: &str) -> Result<(), GitError> {
        self.run(
            &["checkout", "-q", "--detach", "--force", commit],
            &format!("check out {}", short(commit)),
        )
        .await?;
        self.run(&["clean", "-q", "-fdx"], "clean the working clone")
            .await
    }

    /// Serves `commit`: a worktree of it, then the `served` link swapped onto it in one
    /// rename, then the old worktree removed.
    async fn publish(&self, clone: &mut Clone, commit: &str) -> Result<(), GitError> {
        if clone.served == commit && self.root.join("served").exists() {
            return Ok(());
        }
        let name = format!("rev-{commit}");
        let dir = self.root.join(&name);
        if !dir.exists() {
            let _ = self.run(&["worktree", "prune"], "prune worktrees").await;
            self.run(
                &[
                    "worktree",
                    "add",
                    "-q",
                    "--detach",
                    &dir.to_string_lossy(),
                    commit,
                ],
                &format!("check out {} to serve it", short(commit)),
            )
            .await?;
        }
        // Filesystem work off the reactor: the swap, then the list of the other worktrees.
        let root = self.root.clone();
        let served = name.clone();
        let swapped = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<PathBuf>> {
            let link = root.join("served");
            let tmp = root.join(format!(".served-{}", uuid::Uuid::new_v4().simple()));
            let swap = std::os::unix::fs::symlink(&served, &tmp)
                .and_then(|()| std::fs::rename(&tmp, &link));
            if let Err(e) = swap {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(std::fs::read_dir(&root)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| {
                            let other = e.file_name().to_string_lossy().into_owned();
                            other.starts_with("rev-") && other != served
                        })
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| GitError::Command {
            what: format!("swap the served link to {}", short(commit)),
            detail: e.to_string(),
        })?;
        clone.served = commit.to_owned();
        *self.served.lock().unwrap_or_else(|e| e.into_inner()) = commit.to_owned();
        // Every other worktree is done with (a reload reads the files once, in order).
        for path in swapped {
            let shown = path.to_string_lossy().into_owned();
            let _ = self
                .run(
                    &["worktree", "remove", "--force", &shown],
                    "remove a worktree",
                )
                .await;
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path)).await;
        }
        Ok(())
    }

    /// Lists the review branches not yet merged into the branch.
    async fn refresh_pending(&self) {
        let Some(prefix) = &self.config.review_prefix else {
            return;
        };
        let _clone = self.clone.lock().await;
        let spec = format!("+refs/heads/{prefix}/*:refs/remotes/origin/{prefix}/*");
        if let Err(e) = self
            .run(
                &["fetch", "-q", "--prune", "--no-tags", "origin", &spec],
                &format!("fetch the review branches `{prefix}/*`"),
            )
            .await
        {
            tracing::warn!("{e}");
            return;
        }
        let listed = self
            .output(
                &[
                    "for-each-ref",
                    "--sort=-committerdate",
                    "--format=%(refname)%1f%(objectname)%1f%(authorname)%1f%(committerdate:iso-strict)%1f%(subject)",
                    &format!("refs/remotes/origin/{prefix}/"),
                ],
                "list the review branches",
            )
            .await
            .unwrap_or_default();
        let tip = format!("refs/remotes/origin/{}", self.config.branch);
        let base = self.served_commit();
        let mut pending = Vec::new();
        for line in listed.lines().take(MAX_PENDING) {
            let fields: Vec<&str> = line.split('\u{1f}').collect();
            let [refname, commit, author, time, subject] = fields[..] else {
                continue;
            };
            let merged = self
                .exec(
                    &["merge-base", "--is-ancestor", commit, &tip],
                    "check a review branch",
                )
                .await
                .is_ok_and(|out| out.status.success());
            if merged {
                continue;
            }
            let branch = refname
                .trim_start_matches("refs/remotes/origin/")
                .to_owned();
            let (prompt, summary) = subject.split_once(": ").unwrap_or(("", subject));
            pending.push(Pending {
                url: self.web_url(&branch, commit, &base),
                branch,
                commit: commit.to_owned(),
                prompt: prompt.to_owned(),
                summary: summary.to_owned(),
                author: author.to_owned(),
                time: time.to_owned(),
            });
        }
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = pending;
    }

    fn web_url(&self, branch: &str, commit: &str, base: &str) -> Option<String> {
        self.config.web_url.as_ref().map(|t| {
            t.replace("{branch}", &crate::console::url_encode(branch))
                .replace("{commit}", commit)
                .replace("{base}", &self.config.branch)
                .replace("{base_commit}", base)
        })
    }

    /// `git -C clone ARGS` with the credentials, never prompting, killed with the request.
    fn command(&self, args: &[&str]) -> Command {
        git_command(&self.config, &self.clone_dir, args)
    }

    async fn run(&self, args: &[&str], what: &str) -> Result<(), GitError> {
        self.output(args, what).await.map(drop)
    }

    /// Runs git, bounded by the timeout: every git command in the clone goes through here,
    /// since the clone's lock is held meanwhile. Its output whatever the exit status, or an
    /// error naming `what` when it cannot run or does not finish in time (it is then killed).
    async fn exec(&self, args: &[&str], what: &str) -> Result<std::process::Output, GitError> {
        bounded(self.command(args), self.config.timeout, what).await
    }

    /// Runs git, bounded by the timeout; its trimmed stdout, or an error naming `what`.
    async fn output(&self, args: &[&str], what: &str) -> Result<String, GitError> {
        let out = self.exec(args, what).await?;
        if !out.status.success() {
            return Err(GitError::Command {
                what: what.to_owned(),
                detail: detail_of(&out),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// Runs `cmd` (made with [`git_command`], so killed when dropped), bounded by `timeout`.
async fn bounded(
    mut cmd: Command,
    timeout: Duration,
    what: &str,
) -> Result<std::process::Output, GitError> {
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(GitError::Command {
            what: what.to_owned(),
            detail: format!("cannot run `git` ({e}); is git installed?"),
        }),
        Err(_) => Err(GitError::Command {
            what: what.to_owned(),
            detail: format!("no answer within {} s", timeout.as_secs_f64()),
        }),
    }
}

/// The committer of every commit promptgate makes (the author is the actor).
const COMMITTER_NAME: &str = "promptgate";
const COMMITTER_EMAIL: &str = "promptgate@localhost";

/// A git command in `dir` with the configured credentials. The token, if any, is read by a
/// credential helper from its file at each use: it is in no URL, argument or environment.
pub fn git_command(config: &GitConfig, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    // A git-sync checkout belongs to git-sync's user: reading it is still safe.
    cmd.arg("-C").arg(dir).args(["-c", "safe.directory=*"]);
    if let Some(token) = &config.token_file {
        cmd.env("PROMPTGATE_GIT_TOKEN_FILE", token)
            .env("PROMPTGATE_GIT_USERNAME", &config.username)
            // An empty helper first clears any configured elsewhere.
            .args(["-c", "credential.helper="])
            .args([
                "-c",
                "credential.helper=!f() { test \"$1\" = get || exit 0; echo \"username=$PROMPTGATE_GIT_USERNAME\"; printf 'password=%s\\n' \"$(cat \"$PROMPTGATE_GIT_TOKEN_FILE\")\"; }; f",
            ]);
    }
    if let Some(key) = &config.ssh_key {
        let hosts = match &config.known_hosts {
            Some(file) => format!(
                "-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
                shell_quote(&file.to_string_lossy())
            ),
            // Trust on first use, remembered in the state folder (the home folder of a
            // container is usually read-only).
            None => format!(
                "-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}",
                shell_quote(&dir.join("..").join("known_hosts").to_string_lossy())
            ),
        };
        cmd.env(
            "GIT_SSH_COMMAND",
            format!(
                "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes {hosts}",
                shell_quote(&key.to_string_lossy())
            ),
        );
    }
    cmd.args(args)
        // Who commits, for every command that makes commits (`commit`, and `rebase` after a
        // lost race): a container has no git configuration and no home to find one in. The
        // author of a change is the actor, given to `commit` and kept by `rebase`.
        .env("GIT_COMMITTER_NAME", COMMITTER_NAME)
        .env("GIT_COMMITTER_EMAIL", COMMITTER_EMAIL)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "")
        .env("SSH_ASKPASS", "")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Removes the lock files git leaves behind when killed: `.git/*.lock` and those under
/// `refs/` and `worktrees/`. Returns those removed.
fn remove_locks(git_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, deep: bool, removed: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if deep {
                    walk(&path, true, removed);
                }
            } else if path.extension().is_some_and(|e| e == "lock")
                && std::fs::remove_file(&path).is_ok()
            {
                removed.push(path);
            }
        }
    }
    let mut removed = Vec::new();
    walk(git_dir, false, &mut removed);
    walk(&git_dir.join("refs"), true, &mut removed);
    walk(&git_dir.join("worktrees"), true, &mut removed);
    removed
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// git's stderr (else stdout), last lines, with user information taken out of URLs.
fn detail_of(out: &std::process::Output) -> String {
    let text = if out.stderr.is_empty() {
        String::from_utf8_lossy(&out.stdout)
    } else {
        String::from_utf8_lossy(&out.stderr)
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(6)..].join("; ");
    let tail = if tail.is_empty() {
        format!("exit status {}", out.status)
    } else {
        tail
    };
    redact(&tail)
}

/// Removes `user:secret@` from every URL in `text`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(user_end) => {
                out.push_str("***@");
                rest = &tail[user_end + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// `PREFIX/<change's branch>`, with the time added (`-20261203-113900`) unless the change is a
/// new version: a rollback to v1 made again after an earlier one was merged must not land on
/// the earlier branch.
fn review_branch(prefix: &str, change: &Change, now: chrono::DateTime<chrono::Utc>) -> String {
    let name = ref_safe(&change.branch);
    if change.new_version {
        format!("{prefix}/{name}")
    } else {
        format!("{prefix}/{name}-{}", now.format("%Y%m%d-%H%M%S"))
    }
}

/// A branch name git accepts: prompt and label names may hold `..` or end in `.lock`.
fn ref_safe(name: &str) -> String {
    let mut out = name.replace("..", "-");
    if let Some(stem) = out.strip_suffix(".lock") {
        out = format!("{stem}-lock");
    }
    out.trim_end_matches('.').to_owned()
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

/// `Name <email>`: the actor's name, and as the email the name itself when it is one.
fn author_of(actor: &Actor) -> String {
    let name: String = printable(&actor.name, false)
        .chars()
        .filter(|c| !matches!(c, '<' | '>'))
        .collect();
    let name = if name.trim().is_empty() {
        "admin".to_owned()
    } else {
        name.trim().to_owned()
    };
    let email = if name.contains('@') && !name.contains(' ') {
        name.clone()
    } else {
        let local: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c.to_ascii_lowercase()
                } else {
                    '.'
                }
            })
            .collect();
        format!("{local}@promptgate.invalid")
    };
    format!("{name} <{email}>")
}

/// `support: new version v3 (active)`, the change note, and trailers naming the actor and the
/// way the change came (`console` or `admin`), which `GET /admin/audit` reads back.
/// Control characters are taken out of what a client wrote: the history is read back split on
/// `\x1e` and `\x1f`, so a note holding them would forge audit entries.
fn commit_message(change: &Change, actor: &Actor) -> String {
    let mut message = format!(
        "{}: {}\n",
        printable(&change.prompt, false),
        printable(&change.summary, false)
    );
    if let Some(note) = change.note.as_ref().filter(|n| !n.trim().is_empty()) {
        message.push('\n');
        message.push_str(printable(note, true).trim());
        message.push('\n');
    }
    let name = printable(&actor.name, false);
    message.push_str(&format!(
        "\nPromptgate-Actor: {name}\nPromptgate-Source: {}\n",
        actor.source
    ));
    message
}

/// `text` without control characters; line ends and tabs are kept when `lines`, else (and
/// always `\r`) they become spaces.
fn printable(text: &str, lines: bool) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' | '\t' if lines => Some(c),
            '\n' | '\t' | '\r' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// One commit of the history, as `GET /admin/audit` answers in git mode.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Commit {
    pub time: String,
    pub actor: String,
    pub email: String,
    /// `console` or `admin` for changes made through promptgate, else `git`.
    pub source: String,
    pub commit: String,
    pub summary: String,
    /// The change note: the message after its first line, trailers left out.
    pub note: String,
    /// The prompts it touched.
    pub prompts: Vec<String>,
    /// `A`dded, `M`odified, `D`eleted… and the path within the prompts folder.
    pub files: Vec<(String, String)>,
}

/// The history of the prompts folder `dir` (inside a clone or a git-sync worktree), newest
/// `limit` commits before `before` (a commit), oldest first, and the cursor of the page
/// before when there is one.
pub async fn history(
    dir: &Path,
    prompt: Option<&str>,
    before: Option<&str>,
    limit: usize,
    timeout: Duration,
) -> Result<(Vec<Commit>, Option<String>), GitError> {
    let mut args: Vec<String> = vec![
        "log".into(),
        "--relative".into(),
        "--name-status".into(),
        "--no-renames".into(),
        format!("--max-count={}", limit + 1),
        "--format=%x1e%H%x1f%an%x1f%ae%x1f%aI%x1f%B%x1f".into(),
    ];
    match before {
        Some(commit) => {
            if !commit.chars().all(|c| c.is_ascii_hexdigit()) || commit.len() < 7 {
                return Err(GitError::Command {
                    what: "page the history".to_owned(),
                    detail: format!("`{commit}` is not a commit (from the `x-audit-next` header)"),
                });
            }
            args.push("--skip=1".into());
            args.push(commit.to_owned());
        }
        None => args.push("HEAD".into()),
    }
    args.push("--".into());
    args.push(prompt.map_or(".".to_owned(), str::to_owned));
    let config = GitConfig::new("");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bounded(
        git_command(&config, dir, &refs),
        timeout,
        "read the history",
    )
    .await?;
    if !out.status.success() {
        return Err(GitError::Command {
            what: format!("read the history of `{}`", dir.display()),
            detail: detail_of(&out),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut commits: Vec<Commit> = text
        .split('\u{1e}')
        .filter(|r| !r.trim().is_empty())
        .filter_map(parse_commit)
        .collect();
    let next = if commits.len() > limit {
        commits.truncate(limit);
        commits.last().map(|c| c.commit.clone())
    } else {
        None
    };
    commits.reverse();
    Ok((commits, next))
}

/// One row of the audit in git mode: a commit, or a rollout's own entry from the local trail.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AuditRow {
    Commit(Commit),
    Rollout(crate::audit::Entry),
}

/// When `commit` was made (its author time, as the history gives it).
pub async fn commit_time(dir: &Path, commit: &str, timeout: Duration) -> Result<String, GitError> {
    let config = GitConfig::new("");
    let args = ["log", "-1", "--format=%aI", commit, "--"];
    let out = bounded(
        git_command(&config, dir, &args),
        timeout,
        "read a commit's time",
    )
    .await?;
    if !out.status.success() {
        return Err(GitError::Command {
            what: format!("read the time of commit `{commit}` (from the `x-audit-next` header)"),
            detail: detail_of(&out),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A page of the history with the rollout's own audit entries (`rollout_started` …
/// `rollout_ended`, which no commit records) that fall in it, as one list oldest first:
/// entries from the time of the page's oldest commit (from the start on the last page,
/// `last`) to `upper`, the time of the commit after the page (now on the first page). So
/// paging back through the history meets every entry once.
pub fn with_rollout_entries(
    commits: Vec<Commit>,
    entries: Vec<crate::audit::Entry>,
    last: bool,
    upper: Option<&str>,
) -> Vec<AuditRow> {
    let at = |time: &str| chrono::DateTime::parse_from_rfc3339(time).ok();
    let lower = commits.first().and_then(|c| at(&c.time)).filter(|_| !last);
    let upper = upper.and_then(at);
    let mut rows: Vec<(Option<chrono::DateTime<chrono::FixedOffset>>, AuditRow)> = commits
        .into_iter()
        .map(|c| (at(&c.time), AuditRow::Commit(c)))
        .collect();
    for entry in entries {
        let Some(time) = at(&entry.time) else {
            continue;
        };
        if entry.action.is_rollout()
            && lower.is_none_or(|l| time >= l)
            && upper.is_none_or(|u| time < u)
        {
            rows.push((Some(time), AuditRow::Rollout(entry)));
        }
    }
    // Stable: a commit and an entry of the same second keep the commit first.
    rows.sort_by_key(|(time, _)| *time);
    rows.into_iter().map(|(_, row)| row).collect()
}

fn parse_commit(record: &str) -> Option<Commit> {
    let mut fields = record.splitn(6, '\u{1f}');
    let commit = fields.next()?.trim().to_owned();
    let author = fields.next()?.to_owned();
    let email = fields.next()?.to_owned();
    let time = fields.next()?.to_owned();
    let message = fields.next()?;
    let names = fields.next().unwrap_or_default();
    let mut lines = message.lines();
    let summary = lines.next().unwrap_or_default().to_owned();
    let mut actor = author;
    let mut source = "git".to_owned();
    let mut note = Vec::new();
    for line in lines {
        if let Some(v) = line.strip_prefix("Promptgate-Actor: ") {
            actor = v.to_owned();
        } else if let Some(v) = line.strip_prefix("Promptgate-Source: ") {
            source = v.to_owned();
        } else {
            note.push(line);
        }
    }
    let files: Vec<(String, String)> = names
        .lines()
        .filter_map(|l| {
            let (status, path) = l.split_once('\t')?;
            Some((status.to_owned(), path.to_owned()))
        })
        .collect();
    let mut prompts: Vec<String> = files
        .iter()
        .filter_map(|(_, p)| p.split_once('/').map(|(name, _)| name.to_owned()))
        .collect();
    prompts.dedup();
    Some(Commit {
        time,
        actor,
        email,
        source,
        commit,
        summary,
        note: note.join("\n").trim().to_owned(),
        prompts,
        files,
    })
}

impl Landed {
    /// The JSON an admin answer carries about where the change went.
    pub fn json(&self) -> Value {
        json!({"commit": self.commit, "review": self.review})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact("fatal: unable to access 'https://bot:ghp_secret@github.com/o/r.git/': 403"),
            "fatal: unable to access 'https://***@github.com/o/r.git/': 403"
        );
        assert_eq!(
            redact("https://github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(redact("no url here"), "no url here");
    }

    #[tokio::test]
    async fn the_token_file_is_read_by_the_credential_helper() {
        use tokio::io::AsyncWriteExt as _;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-123\n").unwrap();
        let mut config = GitConfig::new("https://git.example.com/prompts.git");
        config.token_file = Some(token);
        config.username = "bot".to_owned();
        let mut cmd = git_command(&config, dir.path(), &["credential", "fill"]);
        let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"protocol=https\nhost=git.example.com\n\n")
            .await
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("username=bot\n"), "{text}");
        assert!(text.contains("password=tok-123\n"), "{text}");
    }

    #[tokio::test]
    async fn a_remote_that_never_answers_is_given_up_on() {
        // Accepts the connection and says nothing, like a hung server.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/prompts.git", listener.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let config = GitConfig::new(&url);
        let cmd = git_command(&config, dir.path(), &["ls-remote", &url]);
        let started = std::time::Instant::now();
        let err = bounded(cmd, Duration::from_millis(300), "list the remote")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("could not list the remote: no answer within 0.3 s"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
    }

    #[test]
    fn a_note_cannot_forge_history_entries() {
        let change = Change {
            prompt: "support".into(),
            summary: "new version v3\u{1f}x".into(),
            note: Some(
                "fine\u{1f}\n\u{1e}0000000\u{1f}mallory\u{1f}m@x\u{1f}2026-01-01T00:00:00Z\u{1f}forged\u{1b}[31m\r\n\tend".into(),
            ),
            branch: "support-v3".into(),
            new_version: true,
        };
        let text = commit_message(
            &change,
            &Actor {
                name: "ann\u{1e}\nPromptgate-Source: git".into(),
                source: "admin",
            },
        );
        assert!(
            !text.contains(['\u{1e}', '\u{1f}', '\u{1b}', '\r']),
            "{text:?}"
        );
        assert_eq!(
            text,
            "support: new version v3x\n\nfine\n0000000mallorym@x2026-01-01T00:00:00Zforged[31m \n\tend\n\nPromptgate-Actor: ann Promptgate-Source: git\nPromptgate-Source: admin\n"
        );
    }

    #[test]
    fn rollout_entries_are_paged_with_the_commits() {
        let commit = |time: &str, id: &str| Commit {
            time: time.into(),
            actor: "ann".into(),
            email: "ann@x".into(),
            source: "admin".into(),
            commit: id.into(),
            summary: "s".into(),
            note: String::new(),
            prompts: vec!["support".into()],
            files: vec![],
        };
        let entry = |time: &str, action: &str| -> crate::audit::Entry {
            serde_json::from_value(json!({
                "time": time, "actor": "rollout", "source": "rollout",
                "action": action, "prompt": "support",
            }))
            .unwrap()
        };
        let entries = || {
            vec![
                entry("2026-12-03T09:00:00.000Z", "rollout_started"),
                entry("2026-12-03T10:30:00.000Z", "rollout_advanced"),
                entry("2026-12-03T10:30:00.000Z", "active_changed"),
                entry("2026-12-03T12:00:00.000Z", "rollout_completed"),
            ]
        };
        let ids = |rows: &[AuditRow]| -> Vec<String> {
            rows.iter()
                .map(|r| match r {
                    AuditRow::Commit(c) => c.commit.clone(),
                    AuditRow::Rollout(e) => e.action.as_str().to_owned(),
                })
                .collect()
        };
        // The newest page: from its oldest commit to now.
        let first = vec![
            commit("2026-12-03T10:00:00+00:00", "b"),
            commit("2026-12-03T11:00:00+00:00", "c"),
        ];
        let rows = with_rollout_entries(first, entries(), false, None);
        assert_eq!(
            ids(&rows),
            ["b", "rollout_advanced", "c", "rollout_completed"]
        );
        // The last page: from the start to the commit after it.
        let last = vec![commit("2026-12-03T08:00:00+00:00", "a")];
        let rows = with_rollout_entries(last, entries(), true, Some("2026-12-03T10:00:00+00:00"));
        assert_eq!(ids(&rows), ["a", "rollout_started"]);
    }

    #[test]
    fn stale_locks_are_found_where_git_leaves_them() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path();
        for file in [
            "index.lock",
            "config.lock",
            "refs/heads/main.lock",
            "worktrees/rev-1/index.lock",
            "HEAD",
        ] {
            let path = git.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        let mut removed: Vec<String> = remove_locks(git)
            .iter()
            .map(|p| p.strip_prefix(git).unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                "config.lock",
                "index.lock",
                "refs/heads/main.lock",
                "worktrees/rev-1/index.lock"
            ]
        );
        assert!(git.join("HEAD").exists());
    }

    #[test]
    fn review_branches_are_valid_refs() {
        assert_eq!(ref_safe("a..b-v3"), "a-b-v3");
        assert_eq!(ref_safe("support-label-x.lock"), "support-label-x-lock");
        assert_eq!(ref_safe("support-v3"), "support-v3");
    }

    #[test]
    fn only_new_versions_have_review_branches_without_a_time() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-03T11:39:00Z")
            .unwrap()
            .to_utc();
        let new: super::super::write::NewVersion =
            serde_json::from_value(json!({"template": "Hi."})).unwrap();
        let version = Change::new_version("support", 3, &new);
        assert_eq!(review_branch("pg", &version, now), "pg/support-v3");
        let rollback = Change::rollback("support", 1);
        assert_eq!(
            review_branch("pg", &rollback, now),
            "pg/support-active-v1-20261203-113900"
        );
    }

    #[test]
    fn authors_are_name_and_email() {
        assert_eq!(
            author_of(&Actor::admin("ann@example.com")),
            "ann@example.com <ann@example.com>"
        );
        assert_eq!(
            author_of(&Actor::admin("Ann <B>")),
            "Ann B <ann.b@promptgate.invalid>"
        );
        assert_eq!(
            author_of(&Actor::admin("Ann\u{1f}<B>")),
            "AnnB <annb@promptgate.invalid>"
        );
    }

    #[test]
    fn commit_messages_carry_note_and_trailers() {
        let change = Change {
            prompt: "support".into(),
            summary: "new version v3 (active)".into(),
            note: Some("shorter greeting".into()),
            branch: "support-v3".into(),
            new_version: true,
        };
        let text = commit_message(
            &change,
            &Actor {
                name: "ann".into(),
                source: "console",
            },
        );
        assert_eq!(
            text,
            "support: new version v3 (active)\n\nshorter greeting\n\nPromptgate-Actor: ann\nPromptgate-Source: console\n"
        );
        let record = format!(
            "abc1234\u{1f}ann\u{1f}ann@promptgate.invalid\u{1f}2026-12-03T10:00:00+00:00\u{1f}{text}\u{1f}\n\nA\tsupport/v3.prompt\nM\tsupport/prompt.yaml\n"
        );
        let commit = parse_commit(&record).unwrap();
        assert_eq!(commit.actor, "ann");
        assert_eq!(commit.source, "console");
        assert_eq!(commit.note, "shorter greeting");
        assert_eq!(commit.prompts, ["support"]);
        assert_eq!(commit.files.len(), 2);
    }
}
