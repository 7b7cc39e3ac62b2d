//! `MacieJob.spec.definition`: a classification job to create, as CreateClassificationJob takes
//! it. Macie cannot change a job's settings after creation, so the definition is immutable.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The prefix of the tags the operator puts on every job it creates
/// (`macie.kubeops.dev/namespace`, `macie.kubeops.dev/name`, `macie.kubeops.dev/uid`): the
/// schema refuses user tags that start with it, so that a tenant cannot forge them.
pub const RESERVED_TAG_PREFIX: &str = "macie.kubeops.dev/";
/// How many tags the operator adds to a job it creates (see [`RESERVED_TAG_PREFIX`]).
pub const OPERATOR_TAGS: usize = 3;
/// Macie's limit on the tags of a job (CreateClassificationJob's documentation).
pub const MACIE_TAGS_MAX: usize = 50;
/// The most tags spec.definition.tags may hold: Macie's 50 less the operator's own.
pub const USER_TAGS_MAX: usize = MACIE_TAGS_MAX - OPERATOR_TAGS;

/// A classification job for the operator to create (CreateClassificationJob), once, with a
/// client token derived from this resource's UID. Macie cannot change a job's settings: the
/// definition is immutable. To change a job, create a new MacieJob with the new definition (and
/// a new jobName) and delete the old one with `deletionPolicy: Cancel`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self == oldSelf",
        "message": "spec.definition is immutable: Macie cannot change a job's settings; create a new MacieJob"
    },
    {
        "rule": "self.jobType == 'SCHEDULED' || !has(self.scheduleFrequency)",
        "message": "spec.definition.scheduleFrequency is only for SCHEDULED jobs"
    },
    {
        "rule": "self.jobType == 'ONE_TIME' || has(self.scheduleFrequency)",
        "message": "spec.definition.scheduleFrequency is required for a SCHEDULED job"
    },
    {
        "rule": "!has(self.managedDataIdentifierSelector) || !(self.managedDataIdentifierSelector in ['INCLUDE', 'EXCLUDE']) || (has(self.managedDataIdentifierIds) && size(self.managedDataIdentifierIds) > 0)",
        "message": "spec.definition.managedDataIdentifierIds must list identifiers when managedDataIdentifierSelector is INCLUDE or EXCLUDE"
    },
    {
        "rule": "!has(self.managedDataIdentifierIds) || size(self.managedDataIdentifierIds) == 0 || (has(self.managedDataIdentifierSelector) && self.managedDataIdentifierSelector in ['INCLUDE', 'EXCLUDE'])",
        "message": "spec.definition.managedDataIdentifierIds is only for managedDataIdentifierSelector INCLUDE or EXCLUDE"
    }
]))]
pub struct JobDefinition {
    /// ONE_TIME: the job runs once, right after it is created. SCHEDULED: it runs on
    /// scheduleFrequency (and once right away when initialRun is true).
    pub job_type: JobType,

    /// A description of the job (at most 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub description: Option<String>,

    /// SCHEDULED jobs: also analyze every existing object right after the job is created
    /// (otherwise only objects created or changed after it runs). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_run: Option<bool>,

    /// The percentage of eligible objects to analyze, 1 to 100 (Macie's default: 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub sampling_percentage: Option<i32>,

    /// When a SCHEDULED job runs: exactly one of dailySchedule, weeklySchedule, monthlySchedule.
    /// Required for SCHEDULED jobs, not allowed for ONE_TIME jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_frequency: Option<ScheduleFrequency>,

    /// Which S3 buckets (and which objects in them) the job analyzes.
    pub s3_job_definition: S3JobDefinition,

    /// Which managed data identifiers the job uses: RECOMMENDED (Macie's default), ALL,
    /// INCLUDE or EXCLUDE (with managedDataIdentifierIds), or NONE (custom identifiers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_data_identifier_selector: Option<ManagedDataIdentifierSelector>,

    /// Managed data identifiers to include or exclude (managedDataIdentifierSelector INCLUDE
    /// or EXCLUDE only), e.g. `CREDIT_CARD_NUMBER`. At most 200 IDs of at most 64 characters
    /// (bounds of this operator, which keep the resource small; Macie's model states none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200), inner(length(min = 1, max = 64)))]
    pub managed_data_identifier_ids: Option<Vec<String>>,

    /// IDs of custom data identifiers the job uses (at most 30, each at most 128 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 30), inner(length(min = 1, max = 128)))]
    pub custom_data_identifier_ids: Option<Vec<String>>,

    /// IDs of allow lists the job uses (at most 10, each at most 128 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 128)))]
    pub allow_list_ids: Option<Vec<String>>,

    /// Tags of the job: at most 47, since Macie allows 50 and the operator adds 3 of its own to
    /// every job it creates (macie.kubeops.dev/namespace, macie.kubeops.dev/name and
    /// macie.kubeops.dev/uid: they tie the job to this resource). Keys are 1 to 128 characters
    /// and may not start with `macie.kubeops.dev/`; values are at most 256 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = USER_TAGS_MAX))]
    #[schemars(extend("additionalProperties" = {"type": "string", "maxLength": 256}))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.all(k, size(k) >= 1 && size(k) <= 128)",
            "message": "spec.definition.tags: keys must be 1 to 128 characters"
        },
        {
            "rule": "self.all(k, !k.startsWith('macie.kubeops.dev/'))",
            "message": "spec.definition.tags: keys starting with macie.kubeops.dev/ are reserved for the tags the operator adds"
        }
    ]))]
    pub tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobType {
    OneTime,
    Scheduled,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::OneTime => "ONE_TIME",
            JobType::Scheduled => "SCHEDULED",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ManagedDataIdentifierSelector {
    All,
    Exclude,
    Include,
    None,
    Recommended,
}

impl ManagedDataIdentifierSelector {
    pub fn as_str(self) -> &'static str {
        match self {
            ManagedDataIdentifierSelector::All => "ALL",
            ManagedDataIdentifierSelector::Exclude => "EXCLUDE",
            ManagedDataIdentifierSelector::Include => "INCLUDE",
            ManagedDataIdentifierSelector::None => "NONE",
            ManagedDataIdentifierSelector::Recommended => "RECOMMENDED",
        }
    }
}

/// When a SCHEDULED job runs: exactly one of the three.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.dailySchedule), has(self.weeklySchedule), has(self.monthlySchedule)].filter(x, x).size() == 1",
    "message": "spec.definition.scheduleFrequency must set exactly one of dailySchedule, weeklySchedule, monthlySchedule"
}]))]
pub struct ScheduleFrequency {
    /// Every day: `dailySchedule: {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_schedule: Option<DailySchedule>,
    /// Every week on `dayOfWeek`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly_schedule: Option<WeeklySchedule>,
    /// Every month on `dayOfMonth` (1-31; in shorter months, the last day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_schedule: Option<MonthlySchedule>,
}

/// Every day (no settings).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct DailySchedule {}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeeklySchedule {
    /// MONDAY to SUNDAY.
    pub day_of_week: DayOfWeek,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DayOfWeek {
    Sunday,
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonthlySchedule {
    /// Day of the month, 1 to 31 (in a shorter month, the job runs on its last day).
    #[schemars(range(min = 1, max = 31))]
    pub day_of_month: i32,
}

/// The buckets a job analyzes: exactly one of bucketDefinitions (fixed buckets) and
/// bucketCriteria (buckets that match at each run), and optionally which objects (scoping).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.bucketDefinitions) != has(self.bucketCriteria)",
    "message": "spec.definition.s3JobDefinition must set exactly one of bucketDefinitions or bucketCriteria"
}]))]
pub struct S3JobDefinition {
    /// The buckets to analyze, per AWS account that owns them: at most 10 accounts (a bound of
    /// this operator, which keeps the resource small; for more, use bucketCriteria or several
    /// MacieJobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 10))]
    pub bucket_definitions: Option<Vec<BucketDefinition>>,
    /// Criteria that select the buckets at each run (by account, name, permissions, tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_criteria: Option<BucketCriteria>,
    /// Which objects in the buckets to include or exclude (by extension, date, size, key, tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoping: Option<Scoping>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketDefinition {
    /// The 12-digit ID of the AWS account that owns the buckets.
    #[schemars(length(min = 12, max = 12), regex(pattern = r"^[0-9]{12}$"))]
    pub account_id: String,
    /// S3 bucket names (3 to 63 lowercase letters, digits, dots and hyphens): at most 100 per
    /// account (a bound of this operator, which keeps the resource small; for more, use
    /// bucketCriteria or several MacieJobs).
    #[schemars(length(min = 1, max = 100))]
    #[schemars(inner(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")))]
    pub buckets: Vec<String>,
}

/// Criteria that select buckets: includes and excludes, each a list of conditions that must all hold.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketCriteria {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub includes: Option<CriteriaBlock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excludes: Option<CriteriaBlock>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CriteriaBlock {
    /// Conditions that must all hold: at most 10 (a bound of this operator; there are four
    /// bucket properties and tags to test).
    #[serde(rename = "and")]
    #[schemars(length(max = 10))]
    pub and: Vec<Criterion>,
}

/// One bucket condition: a property (simpleCriterion) or tags (tagCriterion), exactly one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.simpleCriterion) != has(self.tagCriterion)",
    "message": "a bucket criterion must set exactly one of simpleCriterion or tagCriterion"
}]))]
pub struct Criterion {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple_criterion: Option<SimpleCriterion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_criterion: Option<TagCriterion>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimpleCriterion {
    /// EQ or NE.
    pub comparator: Comparator,
    /// ACCOUNT_ID, S3_BUCKET_NAME, S3_BUCKET_EFFECTIVE_PERMISSION or S3_BUCKET_SHARED_ACCESS.
    pub key: BucketCriterionKey,
    /// Account IDs, bucket names, or the permission and shared-access values Macie defines
    /// (any one matches): at most 40 values (a bound of this operator), each at most 63
    /// characters (the longest S3 bucket name).
    #[schemars(length(max = 40), inner(length(max = 63)))]
    pub values: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TagCriterion {
    /// EQ or NE.
    pub comparator: Comparator,
    /// Bucket tags (keys, values, or key and value pairs): at most 5 (a bound of this operator).
    #[schemars(length(max = 5))]
    pub tag_values: Vec<TagPair>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct TagPair {
    /// A tag key (at most 128 characters, as for AWS tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub key: Option<String>,
    /// A tag value (at most 256 characters, as for AWS tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub value: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Comparator {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
    Ne,
    Contains,
    StartsWith,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BucketCriterionKey {
    AccountId,
    S3BucketName,
    S3BucketEffectivePermission,
    S3BucketSharedAccess,
}

/// Which objects a job analyzes: includes and excludes, each a list of conditions that must all hold.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scoping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub includes: Option<ScopingBlock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excludes: Option<ScopingBlock>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ScopingBlock {
    /// Conditions that must all hold: at most 10 (a bound of this operator; there are four
    /// object properties and tags to test).
    #[schemars(length(max = 10))]
    pub and: Vec<ScopeTerm>,
}

/// One object condition: a property (simpleScopeTerm) or tags (tagScopeTerm), exactly one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.simpleScopeTerm) != has(self.tagScopeTerm)",
    "message": "a scoping condition must set exactly one of simpleScopeTerm or tagScopeTerm"
}]))]
pub struct ScopeTerm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple_scope_term: Option<SimpleScopeTerm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_scope_term: Option<TagScopeTerm>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimpleScopeTerm {
    /// EQ, GT, GTE, LT, LTE, NE, CONTAINS or STARTS_WITH (which ones a key takes: see the
    /// Macie API reference for SimpleScopeTerm).
    pub comparator: Comparator,
    /// OBJECT_EXTENSION, OBJECT_LAST_MODIFIED_DATE, OBJECT_SIZE or OBJECT_KEY.
    pub key: ScopeKey,
    /// File name extensions, key prefixes, a date or a size (for extensions and prefixes, any
    /// one matches): at most 10 values of at most 256 characters (bounds of this operator; a
    /// key prefix longer than 256 characters is not supported).
    #[schemars(length(max = 10), inner(length(max = 256)))]
    pub values: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScopeKey {
    ObjectExtension,
    ObjectLastModifiedDate,
    ObjectSize,
    ObjectKey,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TagScopeTerm {
    /// EQ or NE.
    pub comparator: Comparator,
    /// `TAG` (the only value Macie accepts).
    #[schemars(extend("enum" = ["TAG"]))]
    pub key: String,
    /// Object tags (keys, or key and value pairs): at most 5 (a bound of this operator).
    #[schemars(length(max = 5))]
    pub tag_values: Vec<TagPair>,
    /// `S3_OBJECT`.
    pub target: TagTarget,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagTarget {
    S3Object,
}
