use densenet::densenet;

densenet! {
    pub Net<growth: 32, theta: 0.5>
}

fn main() {}
