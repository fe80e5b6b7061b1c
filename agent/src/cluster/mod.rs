//! Everything that becomes a [`ClusterState`](model::ClusterState): the model, the two sources (the config dir, the
//! Kubernetes API) and the conversions of Kubernetes and Istio objects they share. Either source
//! hands out whole snapshots, one per (debounced) change ([`Update`]); the agent applies each the
//! same way.
pub mod convert;
pub mod dir;
pub mod kube;
pub mod model;
pub mod source;

use std::path::PathBuf;

use self::{
    dir::{ConfigDir, watch::DirWatch},
    kube::{KubeOptions, KubeSource},
    source::{Problem, Update},
};

/// Which source the agent reads.
#[derive(Clone, Debug)]
pub enum SourceOptions {
    /// A directory of YAML files, watched.
    Dir(PathBuf),
    /// The Kubernetes API (in-cluster config, or a kubeconfig).
    Kube(KubeOptions),
}

impl std::fmt::Display for SourceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "config dir {}", dir.display()),
            Self::Kube(options) => match &options.kubeconfig {
                Some(path) => write!(f, "Kubernetes API (kubeconfig {})", path.display()),
                None => f.write_str("Kubernetes API"),
            },
        }
    }
}

/// The source the agent reads, started.
pub enum Source {
    Dir { config: ConfigDir, watch: DirWatch, started: bool },
    Kube(KubeSource),
}

impl Source {
    /// Starts watching; the first [`Source::next_state`] returns the initial state.
    pub async fn start(options: &SourceOptions, root_namespace: &str) -> anyhow::Result<Self> {
        Ok(match options {
            SourceOptions::Dir(dir) => Self::Dir {
                config: ConfigDir::new(dir).with_root_namespace(root_namespace),
                watch: DirWatch::new(dir)?,
                started: false,
            },
            SourceOptions::Kube(options) => Self::Kube(KubeSource::start(options, root_namespace).await?),
        })
    }

    /// Waits for the next state; `None` when the source ended (the agent cannot go on).
    pub async fn next_state(&mut self) -> Option<Update> {
        match self {
            Self::Dir { config, watch, started } => {
                if std::mem::replace(started, true) {
                    watch.changed().await?;
                }
                Some(match config.reload() {
                    Ok(reload) => Update {
                        state: Some(reload.state),
                        problems: reload
                            .errors
                            .iter()
                            .map(|e| Problem { warning: e.is_warning(), message: e.to_string() })
                            .collect(),
                    },
                    Err(error) => Update {
                        state: None,
                        problems: vec![Problem {
                            warning: false,
                            message: format!("cannot read the config dir: {error}"),
                        }],
                    },
                })
            }
            Self::Kube(source) => source.next_state().await,
        }
    }
}
