//! An in-process fake of the Kubernetes API for the reconcile-step tests: a `kube::Client`
//! whose requests are answered from a map of objects, with every write captured. It serves
//! what a reconcile does: get, merge-patch (finalizers), status apply (with a resourceVersion
//! precondition when the body names one), and Events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One write a reconcile made.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: Method,
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    /// Object path -> object.
    objects: HashMap<String, Value>,
    writes: Vec<Write>,
    version: u64,
}

/// Called with each status write's body before the write is applied (a test changes the
/// world between a write-ahead and the call that follows it).
type Hook = Box<dyn FnMut(&Value) + Send>;

/// One process talking to the fake (the perturbation harness): a dead process's requests
/// reach nothing, and each write it makes is an effect the harness may crash it after.
pub trait Process: Send + Sync {
    fn alive(&self) -> bool;
    /// A write of this process was applied.
    fn effect(&self, write: &Write);
}

/// Called with (the stored status, the written status) of every status write.
type Check = Box<dyn FnMut(&Value, &Value) + Send>;

/// The fake API server.
#[derive(Default, Clone)]
pub struct FakeKube {
    state: Arc<Mutex<State>>,
    before_status_write: Arc<Mutex<Option<Hook>>>,
    /// Sees every status write with the status it replaces (the harness's checks).
    status_check: Arc<Mutex<Option<Check>>>,
    process: Option<Arc<dyn Process>>,
}

/// The path of a namespaced object of a custom resource.
pub fn path_of(obj: &Value, plural: &str) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    format!("/apis/{api_version}/namespaces/{ns}/{plural}/{name}")
}

impl FakeKube {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an object (as created).
    pub fn put(&self, obj: Value, plural: &str) {
        let mut s = self.state();
        s.version += 1;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
        s.objects.insert(path_of(&obj, plural), obj);
    }

    /// The stored object at `path`, if any.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.state().objects.get(path).cloned()
    }

    /// Runs `hook` with the body of every later status write, before it is applied.
    pub fn before_status_write(&self, hook: impl FnMut(&Value) + Send + 'static) {
        *self.before_status_write.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(hook));
    }

    /// Runs `check` with (the stored status, the written status) of every later status
    /// write, while the write is applied.
    pub fn check_status_writes(&self, check: impl FnMut(&Value, &Value) + Send + 'static) {
        *self.status_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(check));
    }

    /// How many writes so far.
    pub fn write_count(&self) -> usize {
        self.state().writes.len()
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.state().writes.clone()
    }

    /// Status writes so far.
    pub fn status_writes(&self) -> Vec<Write> {
        self.writes()
            .into_iter()
            .filter(|w| w.path.ends_with("/status"))
            .collect()
    }

    /// Events published so far: (reason, note).
    pub fn events(&self) -> Vec<(String, String)> {
        self.writes()
            .into_iter()
            .filter(|w| w.path.contains("/events") && w.method == Method::POST)
            .map(|w| {
                (
                    w.body["reason"].as_str().unwrap_or_default().to_string(),
                    w.body["note"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Updates a stored object as a user would (spec, labels, deletion): `change` edits it; a
    /// spec change bumps the generation. An object being deleted without finalizers is removed.
    pub fn edit(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut s = self.state();
        s.version += 1;
        let version = s.version;
        let Some(obj) = s.objects.get_mut(path) else { return };
        let spec = obj["spec"].clone();
        change(obj);
        if obj["spec"] != spec {
            let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(g + 1);
        }
        obj["metadata"]["resourceVersion"] = json!(version.to_string());
        let gone = !obj["metadata"]["deletionTimestamp"].is_null()
            && obj["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
        if gone {
            s.objects.remove(path);
        }
    }

    /// The version of the last change (every request moves it).
    pub fn version(&self) -> u64 {
        self.state().version
    }

    /// The paths of every stored object.
    pub fn paths(&self) -> Vec<String> {
        let mut p: Vec<String> = self.state().objects.keys().cloned().collect();
        p.sort();
        p
    }

    /// A kube client of `process` talking to this fake.
    pub fn client_of(&self, process: Arc<dyn Process>) -> kube::Client {
        FakeKube {
            process: Some(process),
            ..self.clone()
        }
        .client()
    }

    /// A kube client talking to this fake.
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move { Ok::<_, std::convert::Infallible>(me.answer(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    async fn answer(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let merge = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/merge-patch"));
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if self.process.as_ref().is_some_and(|p| !p.alive()) {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable", "code": 503, "message": "the process is dead"}),
            );
        }
        let written = self.apply(method, path, merge, body);
        if let (Some(w), Some(p)) = (&written.1, &self.process) {
            p.effect(w);
        }
        written.0
    }

    /// Applies one request; returns the response and the write it made, if any.
    fn apply(&self, method: Method, path: String, merge: bool, body: Value) -> (Response<Body>, Option<Write>) {
        if method == Method::PATCH
            && path.ends_with("/status")
            && let Some(hook) = self
                .before_status_write
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
        {
            hook(&body);
        }
        let mut s = self.state();
        // A write that names a resourceVersion is made only against that version (as the API
        // server does): otherwise 409 Conflict, and nothing is written.
        if let Some(expected) = body["metadata"]["resourceVersion"].as_str() {
            let object_path = path.strip_suffix("/status").unwrap_or(&path);
            let held = s
                .objects
                .get(object_path)
                .map(|o| o["metadata"]["resourceVersion"].clone());
            if held.is_some_and(|v| v.as_str() != Some(expected)) {
                let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"});
                return (respond(StatusCode::CONFLICT, &conflict), None);
            }
        }
        let write = (method != Method::GET).then(|| Write {
            method: method.clone(),
            path: path.clone(),
            body: body.clone(),
        });
        if let Some(w) = &write {
            s.writes.push(w.clone());
        }
        if path.contains("/events") {
            let mut ev = body;
            if ev["metadata"]["name"].is_null() {
                ev["metadata"]["name"] = json!(format!("ev-{}", s.writes.len()));
            }
            return (respond(StatusCode::CREATED, &ev), write);
        }
        let (object_path, status) = match path.strip_suffix("/status") {
            Some(p) => (p.to_string(), true),
            None => (path.clone(), false),
        };
        if method != Method::GET {
            s.version += 1;
        }
        let version = s.version;
        let Some(obj) = s.objects.get_mut(&object_path) else {
            let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
            return (respond(StatusCode::NOT_FOUND, &not_found), None);
        };
        if method == Method::PATCH
            && status
            && let Some(check) = self.status_check.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
        {
            check(&obj["status"], &body["status"]);
        }
        let read = method == Method::GET;
        match (method, status) {
            (Method::GET, _) => {}
            // A merge patch removes what it sets to null; an apply replaces the status.
            (Method::PATCH, true) if merge => {
                for (k, v) in body["status"].as_object().into_iter().flatten() {
                    match v {
                        Value::Null => {
                            if let Some(st) = obj["status"].as_object_mut() {
                                st.remove(k);
                            }
                        }
                        v => obj["status"][k] = v.clone(),
                    }
                }
            }
            (Method::PATCH, true) => obj["status"] = body["status"].clone(),
            (Method::PATCH, false) => {
                if let Some(f) = body["metadata"].get("finalizers") {
                    obj["metadata"]["finalizers"] = f.clone();
                }
                if let Some(spec) = body.get("spec") {
                    for (k, v) in spec.as_object().into_iter().flatten() {
                        obj["spec"][k] = v.clone();
                    }
                }
            }
            _ => return (respond(StatusCode::METHOD_NOT_ALLOWED, &json!({})), None),
        }
        if !read {
            obj["metadata"]["resourceVersion"] = json!(version.to_string());
        }
        let out = obj.clone();
        // A deleted object goes once its last finalizer is removed.
        let gone = !out["metadata"]["deletionTimestamp"].is_null()
            && out["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
        if gone {
            s.objects.remove(&object_path);
        }
        (respond(StatusCode::OK, &out), write)
    }
}

fn respond(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
