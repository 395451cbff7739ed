//! The resource types the fake API server serves: their group, version, names, scope,
//! subresources and the verbs discovery advertises.

/// One served resource type.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ResourceType {
    /// A small number unique per type, used in store keys.
    pub id: u8,
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural resource name, as in URLs.
    pub plural: &'static str,
    /// Singular name (for discovery).
    pub singular: &'static str,
    /// The kind of one object.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names advertised in discovery (`po`, `cj`).
    pub short_names: &'static [&'static str],
    /// Categories advertised in discovery (`all`).
    pub categories: &'static [&'static str],
    /// Subresources served (`status`, `log`).
    pub subresources: &'static [&'static str],
    /// Whether `metadata.generation` counts spec changes.
    pub has_generation: bool,
}

impl ResourceType {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of a list of these objects.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// `pods` or `jobs.batch`, as in error messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether the resource has a `status` subresource (then the main resource ignores
    /// status changes and `/status` ignores everything else).
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }

    /// The verbs advertised for the main resource.
    pub fn verbs(&self) -> &'static [&'static str] {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// Namespaces.
pub(crate) const NAMESPACES: ResourceType = ResourceType {
    id: 0,
    group: "",
    version: "v1",
    plural: "namespaces",
    singular: "namespace",
    kind: "Namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    subresources: &["status"],
    has_generation: false,
};

/// Pods.
pub(crate) const PODS: ResourceType = ResourceType {
    id: 1,
    group: "",
    version: "v1",
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    subresources: &["status", "log"],
    has_generation: true,
};

/// Secrets.
pub(crate) const SECRETS: ResourceType = ResourceType {
    id: 2,
    group: "",
    version: "v1",
    plural: "secrets",
    singular: "secret",
    kind: "Secret",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    has_generation: false,
};

/// Jobs.
pub(crate) const JOBS: ResourceType = ResourceType {
    id: 3,
    group: "batch",
    version: "v1",
    plural: "jobs",
    singular: "job",
    kind: "Job",
    namespaced: true,
    short_names: &[],
    categories: &["all"],
    subresources: &["status"],
    has_generation: true,
};

/// CronJobs.
pub(crate) const CRONJOBS: ResourceType = ResourceType {
    id: 4,
    group: "batch",
    version: "v1",
    plural: "cronjobs",
    singular: "cronjob",
    kind: "CronJob",
    namespaced: true,
    short_names: &["cj"],
    categories: &["all"],
    subresources: &["status"],
    has_generation: true,
};

/// Leases.
pub(crate) const LEASES: ResourceType = ResourceType {
    id: 5,
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    singular: "lease",
    kind: "Lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    has_generation: false,
};

/// PersistentVolumeClaims (made by the ephemeral volume controller for a pod's generic
/// ephemeral volumes, or created directly).
pub(crate) const PERSISTENT_VOLUME_CLAIMS: ResourceType = ResourceType {
    id: 6,
    group: "",
    version: "v1",
    plural: "persistentvolumeclaims",
    singular: "persistentvolumeclaim",
    kind: "PersistentVolumeClaim",
    namespaced: true,
    short_names: &["pvc"],
    categories: &[],
    subresources: &["status"],
    has_generation: false,
};

/// Every served resource type.
pub(crate) const ALL: [&ResourceType; 7] = [
    &NAMESPACES,
    &PODS,
    &SECRETS,
    &JOBS,
    &CRONJOBS,
    &LEASES,
    &PERSISTENT_VOLUME_CLAIMS,
];

/// The API groups besides the core group, each with its one version.
pub(crate) const GROUPS: [(&str, &str); 2] = [("batch", "v1"), ("coordination.k8s.io", "v1")];

/// The resource type served at `group/version/plural`.
pub(crate) fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    ALL.into_iter()
        .find(|rt| rt.group == group && rt.version == version && rt.plural == plural)
}

/// The resource types of one group version.
pub(crate) fn in_group_version(
    group: &str,
    version: &str,
) -> impl Iterator<Item = &'static ResourceType> {
    ALL.into_iter()
        .filter(move |rt| rt.group == group && rt.version == version)
}
