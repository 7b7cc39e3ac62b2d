//! macie-operator: keeps Amazon Macie classification jobs and automated-discovery accounts in
//! the state declared by Kubernetes custom resources.
#![forbid(unsafe_code)]
