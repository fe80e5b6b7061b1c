//! Config errors that say where: file, document, object and field.
use std::{
    fmt,
    path::{Path, PathBuf},
};

use super::documents::ObjectId;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Io,
    Syntax,
    Invalid,
    /// Accepted by Istio but (partly) ignored by it or by lockmesh; the object is kept.
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    kind: Kind,
    pub file: PathBuf,
    /// 1-based position of the YAML document in its file.
    pub document: Option<usize>,
    /// `Kind namespace/name` of the object, when known.
    pub object: Option<String>,
    /// Dotted path of the offending field, e.g. `spec.addresses[0]`.
    pub field: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub(super) fn io(path: &Path, err: &std::io::Error) -> Self {
        Self {
            kind: Kind::Io,
            file: path.to_path_buf(),
            document: None,
            object: None,
            field: None,
            message: err.to_string(),
        }
    }

    pub(super) fn syntax(path: &Path, document: usize, message: String) -> Self {
        Self {
            kind: Kind::Syntax,
            file: path.to_path_buf(),
            document: Some(document),
            object: None,
            field: None,
            message,
        }
    }

    pub(super) fn invalid(
        path: &Path,
        document: usize,
        object: Option<&ObjectId>,
        field: Option<String>,
        message: String,
    ) -> Self {
        Self {
            kind: Kind::Invalid,
            file: path.to_path_buf(),
            document: Some(document),
            object: object.map(ToString::to_string),
            field,
            message,
        }
    }

    pub(super) fn object(
        path: &Path,
        document: Option<usize>,
        object: &ObjectId,
        field: Option<String>,
        message: String,
    ) -> Self {
        Self {
            kind: Kind::Invalid,
            file: path.to_path_buf(),
            document,
            object: Some(object.to_string()),
            field,
            message,
        }
    }

    /// Something Istio accepts but ignores (or lockmesh does not honour); the object is kept.
    pub(super) fn warning(
        path: &Path,
        document: Option<usize>,
        object: Option<&ObjectId>,
        field: Option<String>,
        message: String,
    ) -> Self {
        Self {
            kind: Kind::Warning,
            file: path.to_path_buf(),
            document,
            object: object.map(ToString::to_string),
            field,
            message,
        }
    }

    /// A warning: log it, but nothing was rejected.
    pub fn is_warning(&self) -> bool {
        self.kind == Kind::Warning
    }

    /// The file is not valid YAML at all.
    pub fn is_syntax(&self) -> bool {
        self.kind == Kind::Syntax
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_warning() {
            write!(f, "warning: ")?;
        }
        write!(f, "{}", self.file.display())?;
        if let Some(doc) = self.document {
            write!(f, ", document {doc}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}
