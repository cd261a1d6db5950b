pub use super::api_key::Entity as ApiKey;
pub use super::image::Entity as Image;
pub use super::instance::Entity as Instance;
pub use super::meta::Entity as Meta;
pub use super::node::Entity as Node;
pub use super::task::Entity as Task;
pub use super::user::Entity as User;
