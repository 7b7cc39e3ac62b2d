//! macie-operator: keeps Amazon Macie classification jobs and automated-discovery accounts in
//! the state declared by Kubernetes custom resources.
#![forbid(unsafe_code)]

pub mod account;
pub mod api;
pub mod discovery;
pub mod export;
pub mod job;
pub mod macie;
pub mod runtime;

#[cfg(test)]
mod mutation_tests;
