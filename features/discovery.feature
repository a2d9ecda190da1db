@model
Feature: RES — discovery: the seed's story, enterprise finds voyager by name

  Background:
    Given a Service "ent" selecting app=ent
    And a Service "voy" selecting app=voy
    And a ready Pod "enterprise-0" with app=ent on "node-a"
    And a ready Pod "voyager-0" with app=voy on "node-b"
    And a ready Pod "voyager-1" with app=voy on "node-a"
    And the cluster has settled

  Scenario Outline: RES-1 RES-3 short, partial and full names resolve through the search list
    When "enterprise-0" resolves "<name>"
    Then the answer is the ClusterIP of "voy"

    Examples:
      | name                           |
      | voy                            |
      | voy.default                    |
      | voy.default.svc                |
      | voy.default.svc.cluster.local  |
      | voy.default.svc.cluster.local. |

  Scenario: RES-6 PXY-1 enterprise connects to voy and reaches a voyager Pod
    When "enterprise-0" connects to "voy" on port 80
    Then every connection reaches "voyager-0, voyager-1"

  Scenario: RES-2 DNS-13 a name that exists nowhere does not resolve
    When "enterprise-0" resolves "nosuch"
    Then the name does not resolve
