//! The scaffold over real sockets: health, reflection, auth, metrics, readiness and the staged
//! graceful shutdown.

use std::{sync::Arc, time::Duration};

use palisade_auth::{AuthStore, Authenticator, BearerInterceptor, bootstrap_admin};
use palisade_contracts::compliance::v1::{
    self as pb, compliance_service_client::ComplianceServiceClient, compliance_service_server,
};
use palisade_server::{Listeners, ServeOptions, ServerSettings, always_ready, serve};
use palisade_testkit::TestSqlite;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// A service whose EvaluateNow takes a while, to have something in flight at shutdown.
struct Slow;

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl compliance_service_server::ComplianceService for Slow {
    async fn get_compliance_status(
        &self,
        request: Request<pb::GetComplianceStatusRequest>,
    ) -> Result<Response<pb::GetComplianceStatusResponse>, Status> {
        palisade_auth::authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            palisade_auth::Scope::ComplianceRead,
        )?;
        tokio::time::sleep(Duration::from_millis(800)).await;
        Ok(Response::new(pb::GetComplianceStatusResponse::default()))
    }
    async fn list_findings(
        &self,
        _: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn get_history(
        &self,
        _: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn list_customer_posture(
        &self,
        _: Request<pb::ListCustomerPostureRequest>,
    ) -> Result<Response<pb::ListCustomerPostureResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    type ExportReportStream = Stream<pb::ExportReportChunk>;
    async fn export_report(
        &self,
        _: Request<pb::ExportReportRequest>,
    ) -> Result<Response<Self::ExportReportStream>, Status> {
        Err(Status::unimplemented("test"))
    }
    type EvaluateNowStream = Stream<pb::EvaluateNowProgress>;
    async fn evaluate_now(
        &self,
        _: Request<pb::EvaluateNowRequest>,
    ) -> Result<Response<Self::EvaluateNowStream>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn set_evaluation_schedule(
        &self,
        _: Request<pb::SetEvaluationScheduleRequest>,
    ) -> Result<Response<pb::SetEvaluationScheduleResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
}

struct Running {
    grpc: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    admin_secret: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _db: TestSqlite,
}

async fn start() -> Running {
    let db = TestSqlite::create();
    let shutdown = CancellationToken::new();
    let store = AuthStore::open(&db.settings()).await.unwrap();
    let admin_secret = bootstrap_admin(&store, "test admin").await.unwrap();
    let authenticator = Authenticator::start(store, Duration::from_millis(200), shutdown.clone())
        .await
        .unwrap();
    let settings = ServerSettings {
        shutdown_deadline: Duration::from_secs(3),
        ..ServerSettings::ephemeral()
    };
    let listeners = Listeners::bind(&settings).await.unwrap();
    let (grpc, admin) = (
        listeners.grpc.local_addr().unwrap(),
        listeners.admin.local_addr().unwrap(),
    );
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(compliance_service_server::ComplianceServiceServer::new(
        Slow,
    ));
    let server = tokio::spawn(serve(ServeOptions {
        service_name: "test",
        health_names: vec!["palisade.compliance.v1.ComplianceService"],
        settings,
        listeners,
        routes: routes.routes(),
        authenticator: Arc::clone(&authenticator),
        metrics: palisade_telemetry::Metrics::new(),
        readiness: always_ready(),
        shutdown: shutdown.clone(),
    }));
    Running {
        grpc,
        admin,
        admin_secret,
        shutdown,
        server,
        _db: db,
    }
}

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health(addr: std::net::SocketAddr, service: &str) -> Result<i32, Status> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel(addr).await);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn health_reflection_auth_and_metrics() {
    let running = start().await;
    // Health needs no credential.
    assert_eq!(
        health(running.grpc, "palisade.compliance.v1.ComplianceService")
            .await
            .unwrap(),
        1
    );
    assert_eq!(health(running.grpc, "").await.unwrap(), 1);

    // Reflection lists the service.
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            channel(running.grpc).await,
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let listed = format!("{:?}", responses.message().await.unwrap().unwrap());
    assert!(
        listed.contains("palisade.compliance.v1.ComplianceService"),
        "{listed}"
    );
    assert!(
        listed.contains("palisade.auth.v1.CredentialService"),
        "{listed}"
    );

    // No credential: UNAUTHENTICATED. Another partner: PERMISSION_DENIED.
    let mut anonymous = ComplianceServiceClient::new(channel(running.grpc).await);
    let status = anonymous
        .get_compliance_status(pb::GetComplianceStatusRequest {
            partner_tenant_id: "p1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let admin = secrecy::SecretString::from(running.admin_secret.clone());
    let mut client = ComplianceServiceClient::with_interceptor(
        channel(running.grpc).await,
        BearerInterceptor::new(Some(&admin)),
    );
    client
        .get_compliance_status(pb::GetComplianceStatusRequest {
            partner_tenant_id: "p1".into(),
        })
        .await
        .unwrap();

    // The admin port reports RED metrics per RPC, liveness and readiness.
    let metrics = reqwest::get(format!("http://{}/metrics", running.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("method=\"GetComplianceStatus\",code=\"Unauthenticated\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("method=\"GetComplianceStatus\",code=\"Ok\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        reqwest::get(format!("http://{}/healthz", running.admin))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("http://{}/readyz", running.admin))
            .await
            .unwrap()
            .status(),
        200
    );
    running.shutdown.cancel();
    running.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_drains_in_flight_rpcs_and_reports_not_serving() {
    let running = start().await;
    let admin = secrecy::SecretString::from(running.admin_secret.clone());
    let ch = channel(running.grpc).await;
    let mut client =
        ComplianceServiceClient::with_interceptor(ch.clone(), BearerInterceptor::new(Some(&admin)));
    let in_flight = tokio::spawn(async move {
        client
            .get_compliance_status(pb::GetComplianceStatusRequest {
                partner_tenant_id: "p1".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.shutdown.cancel();
    // Health flips to NOT_SERVING on the existing connection while the slow call drains.
    let mut health_client = tonic_health::pb::health_client::HealthClient::new(ch);
    let mut saw_not_serving = false;
    for _ in 0..20 {
        match health_client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(r) if r.get_ref().status == 2 => {
                saw_not_serving = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => break,
        }
    }
    assert!(
        saw_not_serving,
        "health never reported NOT_SERVING during the drain"
    );
    let finished = in_flight.await.unwrap();
    assert!(finished.is_ok(), "the in-flight RPC was cut: {finished:?}");
    running.server.await.unwrap().unwrap();
    // Stopped: new connections are refused.
    assert!(
        tonic::transport::Channel::from_shared(format!("http://{}", running.grpc))
            .unwrap()
            .connect()
            .await
            .is_err()
    );
}
